//! Backend plugins: loading, refusal, panics, discovery, and candle through
//! its plugin giving exactly the in-process results.
//!
//! The plugins are workspace members built here on first use with the same
//! cargo and profile as this test, so they land next to `nngeo`.

use nngeo::backend::{Backend, BackendError, Emitted, RunContext, StepOutput};
use nngeo::plugin::{self, LoadError};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const PLUGINS: &[&str] = &[
    "nngeo-backend-candle",
    "nngeo-backend-example",
    "nngeo-testplugin-abi-mismatch",
    "nngeo-testplugin-panicking",
];

fn exe_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_nngeo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the plugin crates once per test process; returns their folder.
fn plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = exe_dir();
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).arg("build");
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for p in PLUGINS {
            cmd.args(["-p", p]);
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building the plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn lib(dir: &Path, crate_lib: &str) -> PathBuf {
    dir.join(format!(
        "{}{crate_lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

fn nngeo(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nngeo"));
    cmd.args(args).current_dir(cwd);
    cmd.env_remove("NNGEO_BACKEND")
        .env_remove("NNGEO_PLUGIN_PATH")
        .env_remove("NNGEO_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn small_plan() -> nngeo::plan::Plan {
    let src = "experiment p { dtype = f64 }\n\
               data train = digits(split = train) |> take(20, seed = 1)\n\
               model net = mlp(64, [8], 10, init = pytorch(seed = 1))\n\
               let F = Fim(KFAC) of net on train\n\
               measure trace(F)\n";
    nngeo::compile_source(src, &Default::default()).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_naming_both_versions() {
    let path = lib(plugins(), "nngeo_testplugin_abi_mismatch");
    match plugin::load(&path) {
        Err(LoadError::Mismatch {
            field,
            plugin,
            host,
            ..
        }) => {
            assert_eq!(field, "ABI version");
            assert_eq!(plugin, "999");
            assert_eq!(host, nngeo::plugin::abi::ABI_VERSION.to_string());
        }
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a plugin claiming ABI 999 was loaded"),
    }
    let msg = plugin::load(&path).err().unwrap().to_string();
    assert!(msg.contains("plugin 999, host 1"), "{msg}");
}

#[test]
fn a_panicking_plugin_is_an_error_and_the_host_keeps_running() {
    let dir = plugins();
    let p = plugin::load(&lib(dir, "nngeo_testplugin_panicking")).unwrap();
    let mut be = p.create().unwrap();
    let plan = small_plan();
    let out = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: ".".into(),
        out_dir: out.path().into(),
    };
    be.prepare(&plan, &ctx).unwrap();
    let mut got: Vec<Emitted> = Vec::new();
    let err = be
        .run(&plan, &plan.steps[0], &mut |e| got.push(e))
        .unwrap_err();
    match &err {
        BackendError::Failed { step, message } => {
            assert_eq!(*step, 0);
            assert!(message.contains("panicked"), "{message}");
            assert!(message.contains("deliberate panic in step #0"), "{message}");
        }
        other => panic!("wrong error {other:?}"),
    }
    // The result emitted before the panic arrived.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "before_panic");
    assert_eq!(got[0].output, StepOutput::Scalar { value: 1.5 });
    let w = be.warnings();
    assert!(w[0].contains("deliberate panic in warnings"), "{w:?}");
    // The same plugin instance answers again, and another plugin works.
    assert!(be.run(&plan, &plan.steps[0], &mut |_| {}).is_err());
    let candle = plugin::load(&lib(dir, "nngeo_backend_candle")).unwrap();
    let mut c = candle.create().unwrap();
    nngeo::exec::run(&plan, &mut c, &ctx).unwrap();

    // Through the CLI: exit code 1, the message, and the result kept.
    let o = nngeo(
        &[
            "exec",
            "experiments/fim_zoo.ngx",
            "--backend",
            lib(dir, "nngeo_testplugin_panicking").to_str().unwrap(),
            "--out",
            out.path().join("cli").to_str().unwrap(),
        ],
        &[],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("backend plugin `panicking` panicked: deliberate panic"),
        "{}",
        text(&o)
    );
    let kept = std::fs::read_to_string(out.path().join("cli/results.jsonl")).unwrap();
    assert!(kept.contains("before_panic"), "{kept}");
}

#[test]
fn a_library_that_cannot_load_gives_the_loaders_reason() {
    let missing = Path::new("/nonexistent/folder/libnngeo_backend_ghost.so");
    let msg = plugin::load(missing).err().unwrap().to_string();
    assert!(
        msg.contains("cannot open shared object file") || msg.contains("No such file"),
        "{msg}"
    );
    // A file that is not a library at all: the loader says why.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libnngeo_backend_junk.so");
    std::fs::write(&junk, b"not an ELF file").unwrap();
    let msg = plugin::load(&junk).err().unwrap().to_string();
    assert!(
        msg.contains("invalid ELF header") || msg.contains("too short"),
        "{msg}"
    );
    assert!(
        !msg.contains("DlOpen {"),
        "libloading's opaque Display: {msg}"
    );
    // A library without our symbols is "not a plugin", with the symbol named.
    let msg = plugin::load(Path::new("libm.so.6"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("nngeo_plugin_abi_version"), "{msg}");
}

/// The `candle-cuda` situation on a machine without a driver: a plugin
/// whose own dependency is missing. Built here with the C compiler: a
/// library that needs `libnngeo_gone.so`, which is then deleted.
#[test]
fn a_plugin_with_a_missing_dependency_is_reported_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("gone.c"), "int nngeo_gone(void) { return 1; }\n").unwrap();
    std::fs::write(
        d.join("plug.c"),
        "int nngeo_gone(void);\nint nngeo_plugin_abi_version(void) { return nngeo_gone(); }\n",
    )
    .unwrap();
    let cc = |args: &[&str]| {
        let o = Command::new("cc")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "cc: {}", text(&o));
    };
    cc(&["-shared", "-fPIC", "-o", "libnngeo_gone.so", "gone.c"]);
    let plug = plugin::discover::file_name("needs-driver");
    cc(&[
        "-shared",
        "-fPIC",
        "-o",
        &plug,
        "plug.c",
        "-L.",
        "-lnngeo_gone",
    ]);
    std::fs::remove_file(d.join("libnngeo_gone.so")).unwrap();

    let msg = plugin::load(&d.join(&plug)).err().unwrap().to_string();
    assert!(
        msg.contains("libnngeo_gone.so: cannot open shared object file"),
        "{msg}"
    );
    let o = nngeo(
        &["backends"],
        &[("NNGEO_PLUGIN_PATH", d.to_str().unwrap())],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("needs-driver (plugin): unavailable"), "{t}");
    assert!(
        t.contains("libnngeo_gone.so: cannot open shared object file"),
        "{t}"
    );
    assert!(t.contains("candle (built-in): ready"), "{t}");
    let out = d.join("run");
    let o = nngeo(
        &[
            "exec",
            "experiments/fim_zoo.ngx",
            "--backend",
            "needs-driver",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("NNGEO_PLUGIN_PATH", d.to_str().unwrap())],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("backend `needs-driver` is not available")
            && text(&o).contains("libnngeo_gone.so: cannot open shared object file"),
        "{}",
        text(&o)
    );
    let o = nngeo(
        &[
            "exec",
            "experiments/fim_zoo.ngx",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("NNGEO_PLUGIN_PATH", d.to_str().unwrap())],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// A table written in C (so the ABI really is C's) that claims another
/// nngeo version, or a table shorter than the host's: each is refused,
/// naming the field, before any of its functions is called.
#[test]
fn a_c_plugin_table_of_another_nngeo_version_or_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = r#"
#include <stddef.h>
#include <stdint.h>
typedef struct { const char *ptr; size_t len; } Str;
typedef struct {
    size_t size; uint32_t abi_version;
    Str name, plugin_version, nngeo_version, rustc_version, features, framework;
    void *create, *destroy, *capabilities, *call, *free_buf;
} Table;
#define S(s) { s, sizeof(s) - 1 }
static Table table = { sizeof(Table) - SHRINK, 1, S("cplug"), S("0.1.0"), S(NNGEO),
    S("cc"), S(""), S("none"), 0, 0, 0, 0, 0 };
uint32_t nngeo_plugin_abi_version(void) { return 1; }
const Table *nngeo_plugin_table(void) { return &table; }
"#;
    std::fs::write(d.join("cplug.c"), c).unwrap();
    let build = |name: &str, nngeo: &str, shrink: usize| {
        let out = d.join(plugin::discover::file_name(name));
        let o = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(format!("-DNNGEO=\"{nngeo}\""))
            .arg(format!("-DSHRINK={shrink}"))
            .arg("cplug.c")
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "cc: {}", text(&o));
        out
    };
    let older = build("older", "0.0.1", 0);
    match plugin::load(&older) {
        Err(LoadError::Mismatch {
            field,
            plugin,
            host,
            ..
        }) => {
            assert_eq!(field, "nngeo version (message schema)");
            assert_eq!(plugin, "0.0.1");
            assert_eq!(host, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("not refused by version: {:?}", other.err()),
    }
    let short = build("short", env!("CARGO_PKG_VERSION"), 8);
    let msg = plugin::load(&short).err().unwrap().to_string();
    assert!(msg.contains("refused: table size differs"), "{msg}");
    // Matching fields but null entry points: refused, never called.
    let same = build("same", env!("CARGO_PKG_VERSION"), 0);
    let msg = plugin::load(&same).err().unwrap().to_string();
    assert!(msg.contains("`create` entry point is null"), "{msg}");
}

/// Every value of two runs' results.jsonl, in order, without timings.
fn values(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("time_s");
            o.remove("train_time_s");
            v
        })
        .collect()
}

#[test]
fn candle_through_its_plugin_gives_the_in_process_results_exactly() {
    plugins();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("built-in"), out.path().join("plugin"));
    for (dir, backend) in [(&a, "candle"), (&b, "plugin:candle")] {
        let o = nngeo(
            &[
                "exec",
                "experiments/fim_zoo.ngx",
                "--backend",
                backend,
                "--out",
                dir.to_str().unwrap(),
            ],
            &[],
            root,
        );
        assert!(o.status.success(), "{backend}: {}", text(&o));
    }
    let (va, vb) = (values(&a), values(&b));
    assert!(va.len() > 20, "only {} results", va.len());
    assert_eq!(va, vb, "candle and its plugin differ");
}

#[test]
fn backends_are_found_by_env_var_config_file_and_exe_dir() {
    let dir = plugins();
    let tmp = tempfile::tempdir().unwrap();
    let (env_dir, cfg_dir) = (tmp.path().join("env"), tmp.path().join("cfg/plug"));
    std::fs::create_dir_all(&env_dir).unwrap();
    std::fs::create_dir_all(&cfg_dir).unwrap();
    // A refused plugin in the env folder, under a plugin-like name.
    std::fs::copy(
        lib(dir, "nngeo_testplugin_abi_mismatch"),
        env_dir.join(plugin::discover::file_name("future")),
    )
    .unwrap();
    // The example plugin named in a nngeo.toml, relative to it.
    std::fs::copy(
        lib(dir, "nngeo_backend_example"),
        cfg_dir.join(plugin::discover::file_name("example")),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("cfg/nngeo.toml"),
        "[plugins]\npaths = [\"plug\"]\n[defaults]\nbackend = \"example\"\n",
    )
    .unwrap();
    let work = tmp.path().join("cfg/sub");
    std::fs::create_dir_all(&work).unwrap();
    let o = nngeo(
        &["backends"],
        &[("NNGEO_PLUGIN_PATH", env_dir.to_str().unwrap())],
        &work,
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("candle (built-in): ready"), "{t}");
    assert!(t.contains("future (plugin): unavailable"), "{t}");
    assert!(
        t.contains("refused: ABI version differs (plugin 999, host 1)"),
        "{t}"
    );
    assert!(t.contains("found:        $NNGEO_PLUGIN_PATH"), "{t}");
    assert!(t.contains("example (plugin): ready"), "{t}");
    assert!(t.contains("cfg/nngeo.toml)"), "{t}");
    assert!(t.contains("next to the nngeo executable"), "{t}");

    // `[defaults] backend` selects the example plugin for a run.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/fim_zoo.ngx");
    let run = tmp.path().join("run");
    let o = nngeo(
        &[
            "exec",
            file.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &[],
        &work,
    );
    assert!(o.status.success(), "{}", text(&o));
    let manifest = std::fs::read_to_string(run.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"backend\": \"example\""), "{manifest}");

    // A typo in nngeo.toml: file, line and column, exit code 2.
    std::fs::write(
        tmp.path().join("cfg/nngeo.toml"),
        "[plugins]\npath = [\"plug\"]\n",
    )
    .unwrap();
    let o = nngeo(&["backends"], &[], &work);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("nngeo.toml") && t.contains("line 2, column 1"),
        "{t}"
    );
}

#[test]
fn an_unknown_backend_lists_what_was_searched() {
    let o = nngeo(
        &["exec", "experiments/fim_zoo.ngx", "--backend", "nosuch"],
        &[],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("backend `nosuch` is not available"), "{t}");
    assert!(t.contains("plugins searched in"), "{t}");
}
