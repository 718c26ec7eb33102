//! Snapshot tests of every stage: the AST and the plan of each file in
//! `experiments/` and `tests/fixtures/ok/`, and the rendered errors of each
//! file in `tests/fixtures/err/`.
//!
//! Update with `INSTA_UPDATE=always cargo test --test snapshots` and review
//! the diff.

use nngeo::check::CheckOptions;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ngx"))
        .collect();
    v.sort();
    v
}

/// A fixed budget so that snapshots do not depend on this machine's memory.
fn options(file: &Path) -> CheckOptions {
    CheckOptions {
        base_dir: file.parent().unwrap().to_path_buf(),
        memory_budget: None,
        default_budget: 16 << 30,
        data_dirs: vec![],
    }
}

fn name(file: &Path) -> String {
    file.file_stem().unwrap().to_string_lossy().into_owned()
}

fn ok_files() -> Vec<PathBuf> {
    let mut v = files("experiments");
    v.extend(files("tests/fixtures/ok"));
    v
}

#[test]
fn ast_of_every_valid_file() {
    for f in ok_files() {
        let src = std::fs::read_to_string(&f).unwrap();
        let ast = nngeo::syntax::parse(&src)
            .unwrap_or_else(|d| panic!("{}:\n{}", f.display(), nngeo::diag::render("f", &src, &d)));
        insta::assert_yaml_snapshot!(format!("ast__{}", name(&f)), ast);
    }
}

#[test]
fn plan_of_every_valid_file() {
    for f in ok_files() {
        let src = std::fs::read_to_string(&f).unwrap();
        let plan = nngeo::compile_source(&src, &options(&f))
            .unwrap_or_else(|d| panic!("{}:\n{}", f.display(), nngeo::diag::render("f", &src, &d)));
        insta::assert_yaml_snapshot!(format!("plan__{}", name(&f)), plan);
    }
}

#[test]
fn plans_are_deterministic_and_round_trip_through_json() {
    for f in ok_files() {
        let src = std::fs::read_to_string(&f).unwrap();
        let a = nngeo::compile_source(&src, &options(&f)).unwrap();
        let b = nngeo::compile_source(&src, &options(&f)).unwrap();
        assert_eq!(
            a.to_json(),
            b.to_json(),
            "{}: not deterministic",
            f.display()
        );
        let back = nngeo::plan::Plan::from_json(&a.to_json()).unwrap();
        assert_eq!(back, a, "{}: JSON round trip changed the plan", f.display());
        assert_eq!(back.to_json(), a.to_json());
        assert_eq!(a.hash(), b.hash());
    }
}

#[test]
fn rendered_error_of_every_bad_file() {
    let bad = files("tests/fixtures/err");
    assert!(bad.len() >= 30, "only {} error fixtures", bad.len());
    for f in bad {
        let src = std::fs::read_to_string(&f).unwrap();
        let shown = format!("tests/fixtures/err/{}.ngx", name(&f));
        match nngeo::compile_source(&src, &options(&f)) {
            Ok(_) => panic!("{} should not check", f.display()),
            Err(diags) => {
                let text = nngeo::diag::render(&shown, &src, &diags);
                // Every error names file:line:col.
                assert!(text.contains(&format!("{shown}:")), "{text}");
                insta::assert_snapshot!(format!("err__{}", name(&f)), text);
            }
        }
    }
}
