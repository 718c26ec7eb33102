//! Comments: `/* */` blocks anywhere whitespace may be, beside `//` lines.

use super::parse;
use crate::diag::ErrorKind;

/// Replaces each `@…@` run of `text` by spaces (`plain`) or by a block
/// comment of the same length (`commented`), so that both parse to ASTs
/// with identical spans.
fn pair(text: &str) -> (String, String) {
    let mut plain = String::new();
    let mut commented = String::new();
    for (i, part) in text.split('@').enumerate() {
        if i % 2 == 0 {
            plain.push_str(part);
            commented.push_str(part);
        } else {
            let inner = format!("/*{part}*/");
            plain.push_str(&" ".repeat(inner.len()));
            commented.push_str(&inner);
        }
    }
    (plain, commented)
}

#[test]
fn block_comments_are_whitespace() {
    let text = "\
experiment e { seed = @ a seed @1 }
@ a comment over lines,
model m = mlp(...)
with \"quotes\" and // inside @
data d = blobs(n = 20,@*@classes = 2, dim = 3) @ after the statement @
model net = mlp(in = 3, hidden = [4], out = 2) @@
measure trace(Fim(Diag) of net on d)@x@
";
    let (plain, commented) = pair(text);
    assert_ne!(plain, commented);
    let a = parse(&plain).expect("plain parses");
    let b = parse(&commented).expect("commented parses");
    assert_eq!(a.stmts.len(), 4);
    // Equal spans too: a statement's span ends before a trailing comment.
    assert_eq!(a, b);
}

#[test]
fn a_statement_keyword_inside_a_block_comment_does_not_cut_the_file() {
    // The recovery parser cuts the file at statement keywords in column 0;
    // inside a comment they are not statements, so the one error is the
    // misspelt `=` of the last line, reported once.
    let src = "data d = blobs(n = 20, classes = 2, dim = 3)\n/*\nmodel old = (\n*/\nmodel m mlp(in = 3, hidden = [4], out = 2)\n";
    let errors = parse(src).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let at = src.find("model m").unwrap();
    assert!(
        (at..src.len()).contains(&errors[0].span.start),
        "{:?} not in the last statement",
        errors[0].span
    );
}

#[test]
fn an_unclosed_block_comment_is_located_at_its_opening() {
    let src = "data d = blobs(n = 20, classes = 2, dim = 3)\n/* the rest\nmodel m = mlp(in = 3, hidden = [4], out = 2)\n";
    let errors = parse(src).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ErrorKind::Unclosed { open: "/*".into() });
    let at = src.find("/*").unwrap();
    assert_eq!((errors[0].span.start, errors[0].span.end), (at, at + 2));
    // A `/*` inside a string or after `//` opens nothing.
    parse("data d = csv(\"a/*b.csv\", target = \"y\") // /* not a comment\n").unwrap();
}
