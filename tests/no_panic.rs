//! Thousands of mutated and truncated versions of the experiment files go
//! through parse + check + compile; none may panic.

use nngeo::check::CheckOptions;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "|>",
    "\"",
    "-",
    "*",
    "/",
    "+",
    ".",
    "of",
    "on",
    "as",
    "for",
    "in",
    "train",
    "data",
    "model",
    "let",
    "measure",
    "plot",
    "experiment",
    "every",
    "at",
    "Fim",
    "Ntk",
    "KFAC",
    "EKFAC(refit = false)",
    "Dense",
    "mix(norm = KFAC)",
    "net",
    "probe",
    "0",
    "-1",
    "1e309",
    "99999999999999999999",
    "0.5",
    "[]",
    "[1, 2]",
    "layers(net)",
    "K[layer]",
    "\"{x}\"",
    "\"layers.9\"",
    "steps",
    "epochs",
    "true",
    "nan",
    "8GiB",
    "é",
    "\n",
    "//",
];

fn check(src: &str, opts: &CheckOptions) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if let Err(diags) = nngeo::compile_source(src, opts) {
            // Rendering must not panic either, and must say something.
            let text = nngeo::diag::render("f.ngx", src, &diags);
            assert!(!diags.is_empty() && !text.is_empty());
        }
    }));
    if result.is_err() {
        let path = std::env::temp_dir().join("nngeo_panic.ngx");
        std::fs::write(&path, src).unwrap();
        panic!("panicked on input saved to {}", path.display());
    }
}

fn sources() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ngx"))
        .collect();
    v.sort();
    v.into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

fn options() -> CheckOptions {
    CheckOptions {
        base_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments"),
        memory_budget: None,
        default_budget: 1 << 30,
        data_dirs: vec![],
    }
}

#[test]
fn truncations_never_panic() {
    let opts = options();
    let mut n = 0;
    for src in sources() {
        let bytes = src.as_bytes();
        let step = (bytes.len() / 400).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            check(&String::from_utf8_lossy(&bytes[..cut]), &opts);
            check(&String::from_utf8_lossy(&bytes[cut..]), &opts);
            n += 2;
        }
    }
    assert!(n > 2000, "only {n} truncations");
}

#[test]
fn mutations_never_panic() {
    let opts = options();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let srcs = sources();
    let mut n = 0;
    for round in 0..3000 {
        let src = &srcs[round % srcs.len()];
        let mut bytes = src.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let len = bytes.len();
            match rng.below(5) {
                0 if len > 0 => {
                    let a = rng.below(len);
                    let b = (a + 1 + rng.below(40)).min(len);
                    bytes.drain(a..b);
                }
                1 => {
                    let at = rng.below(len + 1);
                    let tok = TOKENS[rng.below(TOKENS.len())];
                    bytes.splice(at..at, tok.bytes());
                }
                2 if len > 2 => {
                    let a = rng.below(len - 1);
                    bytes.swap(a, a + 1);
                }
                3 if len > 0 => {
                    let a = rng.below(len);
                    let b = (a + 1 + rng.below(60)).min(len);
                    let chunk = bytes[a..b].to_vec();
                    let at = rng.below(len + 1);
                    bytes.splice(at..at, chunk);
                }
                _ if len > 0 => {
                    let a = rng.below(len);
                    bytes[a] = b" ()[]{},=|>\"-0123456789abcxyz_\n"[rng.below(31)];
                }
                _ => {}
            }
        }
        check(&String::from_utf8_lossy(&bytes), &opts);
        n += 1;
    }
    assert_eq!(n, 3000);
}

#[test]
fn pathological_inputs_are_errors_not_crashes() {
    let opts = options();
    for src in [
        "(".repeat(100_000),
        "[".repeat(5_000) + &"]".repeat(5_000),
        format!("experiment e {{}}\nlet x = {}1", "-".repeat(50_000)),
        format!("experiment e {{}}\nlet x = 1{}", " + 1".repeat(50_000)),
        format!(
            "experiment e {{}}\ndata d = digits(){}",
            " |> normalize".repeat(20_000)
        ),
        "\"".repeat(3),
        "\u{0}\u{feff}é\r\n".into(),
    ] {
        check(&src, &opts);
        assert!(nngeo::compile_source(&src, &opts).is_err());
    }
}

/// Sizes past what any machine runs are located errors, not overflows
/// (debug builds panic on them), allocations of the whole schedule or an
/// unrolled sweep that never ends. Each says what the limit is.
#[test]
fn oversized_models_schedules_and_sweeps_are_refused() {
    let opts = options();
    let head = "experiment x {\n  seed = 0\n}\ndata train = digits(split = train) |> take(20)\n";
    let measure = "measure trace(Fim(Diag) of net on train)\n";
    let ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]";
    let nested = format!(
        "{}{{\n  measure trace(Fim(Diag) of net on train) as \"t\"\n}}",
        (0..6)
            .map(|k| format!("for v{k} in {ten} "))
            .collect::<Vec<_>>()
            .join("{ ")
    ) + &"}".repeat(5);
    let cases: Vec<(String, &str)> = vec![
        (
            "model net = mlp(in = 64, hidden = [4000000000], out = 10)\n".into(),
            "must be ≤ 2147483648",
        ),
        (
            "model net = mlp(in = 64, hidden = [2000000000, 2000000000], out = 10)\n".into(),
            "beyond nngeo's limit",
        ),
        (
            "model net = sequential(flatten, linear(64, 10), input = [1, 2147483648, 2147483648])\n"
                .into(),
            "beyond nngeo's limit",
        ),
        (
            "block res(c) {\n  conv = conv2d(c, c, kernel = 3, padding = 1)\n  out(x) = conv(x) + x\n}\n\
             model net = sequential(res(4294967296), flatten, linear(256, 10), input = [4, 8, 8])\n"
                .into(),
            "must be ≤ 2147483648",
        ),
        (
            "model net = sequential(conv2d(1, 2000000000, kernel = 1), conv2d(2000000000, 2, kernel = 1), flatten, linear(128, 10), input = [1, 8, 8])\n"
                .into(),
            "beyond nngeo's limit",
        ),
        (
            format!("model net = mlp(in = 64, hidden = [4], out = 10)\n{nested}\n"),
            "more than 100000 plan steps",
        ),
        (
            format!("model net = mlp(in = 64, hidden = [4], out = 10)\nreplicate s in 0..65536 {{\n  {measure}}}\n"),
            "too long: a sweep takes at most 10000 values",
        ),
        (
            format!("model net = mlp(in = 64, hidden = [4], out = 10)\nreplicate s in 3..3 {{\n  {measure}}}\n"),
            "a sweep needs at least one value",
        ),
    ];
    for (body, want) in &cases {
        let src = format!("{head}{body}{measure}");
        check(&src, &opts);
        let diags = nngeo::compile_source(&src, &opts).expect_err(body);
        let text = nngeo::diag::render("f.ngx", &src, &diags);
        assert!(text.contains(want), "{body}: {text}");
    }
    // A schedule of 10¹² steps is counted, not listed: checking it takes
    // no memory (it allocated 1.6 TB before).
    let src = format!(
        "{head}model net = mlp(in = 64, hidden = [4], out = 10)\n\
         train net on train {{\n  optimizer = sgd(lr = 0.1)\n  steps = 1000000000000\n  \
         every 5 steps {{\n    measure loss(net, train) as \"loss\"\n  }}\n}}\n"
    );
    nngeo::compile_source(&src, &opts).unwrap();
}
