//! The `nngeo` command line.
//!
//! Exit status: 0 success, 2 user error (bad file, bad arguments),
//! 1 runtime failure (a backend or the file system failed).

use clap::{Parser, Subcommand, ValueEnum};
use nngeo::check::CheckOptions;
use nngeo::diag::{render, Diagnostic};
use nngeo::plan::{render_table, Dtype, Plan};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cluster_cmd;
mod info_cmd;

/// mimalloc, told to keep the pages it frees
/// ([`nngeo::memory::keep_freed_mimalloc_pages`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  nngeo check experiments/*.ngx             check files, report every error
  nngeo plan experiments/fim_zoo.ngx        steps with estimated memory and cost
  nngeo plan experiments/fim_zoo.ngx --format json
  nngeo exec experiments/ntk_align.ngx --backend candle --device cpu --out runs/x
  nngeo exec experiments/ntk_align.ngx --resume runs/x   continue a killed run
  nngeo backends                            list the backends this build knows
  nngeo models                              the model library (resnet18, vgg, ...)";

#[derive(Parser)]
#[command(
    name = "nngeo",
    version,
    about = "Declarative experiments on the Fisher information and the neural tangent kernel",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F64,
}

#[derive(clap::Args)]
struct Budget {
    /// Largest memory one representation may take, e.g. `8GiB` (default: the
    /// file's `memory_budget`, else half of physical memory); a budget that
    /// is given also bounds the run's estimated peak.
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check files; print every error with its location.
    #[command(after_help = "Example:\n  nngeo check experiments/*.ngx")]
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        budget: Budget,
    },
    /// Show the execution plan of a file with per-step memory and cost.
    #[command(
        after_help = "Examples:\n  nngeo plan experiments/fim_zoo.ngx\n  nngeo plan experiments/fim_zoo.ngx --format yaml"
    )]
    Plan {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        budget: Budget,
        /// `slurm`: print the shards, each with its memory and FLOP
        /// estimate, the stages of the steps sharded over data, each with
        /// one part task's estimate, and the job scripts `exec --on slurm`
        /// would submit.
        #[arg(long, value_enum)]
        on: Option<On>,
        #[command(flatten)]
        cluster: cluster_cmd::ClusterArgs,
        #[command(flatten)]
        over: Overrides,
        /// The run folder the script writes to (default: the file's `out`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run an experiment, in this process (default), as one shard of it
    /// (`--shard I/N`), or as a Slurm job array (`--on slurm`).
    #[command(
        after_help = "Examples:\n  nngeo exec experiments/ntk_align.ngx --backend candle --device cpu\n  nngeo exec experiments/ntk_align.ngx --on slurm --out runs/align\n  nngeo exec experiments/ntk_align.ngx --shard 2/15 --out runs/align/shards/2"
    )]
    Exec(ExecArgs),
    /// Where each shard of a sharded run stands (pending, running, done,
    /// failed, cancelled) and how many results it has written; for steps
    /// sharded over data, how many parts of each stage are done, pending,
    /// running, failed or cancelled.
    #[command(after_help = "Example:\n  nngeo status runs/align")]
    Status { dir: PathBuf },
    /// List the backends this build knows and whether they can run.
    Backends,
    /// List the model library (written in the language, shipped in the
    /// binary): each model's parameters with their defaults and its
    /// parameter count at the defaults.
    #[command(
        after_help = "Example:\n  nngeo models\n\nUse one as `model net = resnet18(classes = 10, stem = cifar, input = [3, 32, 32])`."
    )]
    Models,
    /// Time the representation builders (medians) against NNGeometry's
    /// reference times, with GFLOP/s and each case's peak memory measured in
    /// a fresh process. Set RAYON_NUM_THREADS to fix the thread count.
    #[command(
        after_help = "Example:\n  RAYON_NUM_THREADS=2 nngeo bench --repeats 5\n  nngeo bench --case kfac --case ntk-1000"
    )]
    Bench {
        /// Only these cases (default: all; see the table for names).
        #[arg(long = "case")]
        cases: Vec<String>,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
        /// Run one case once and print its peak memory (used internally).
        #[arg(long, hide = true)]
        once: bool,
    },
    /// Rebuild results.csv and the plots of a run folder from its
    /// results.jsonl and plan.json (also after a crash or an interruption);
    /// a sharded run's shards are merged first.
    #[command(after_help = "Example:\n  nngeo report runs/fim_zoo")]
    Report {
        dir: PathBuf,
        /// Exit with status 3 when a declared claim is not supported.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum On {
    /// This process (the default).
    Local,
    /// A Slurm job array, one task per shard.
    Slurm,
}

/// Options that override the file's header (and `nngeo.toml`).
#[derive(clap::Args)]
struct Overrides {
    /// Backend name (overrides the file's `backend`).
    #[arg(long)]
    backend: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` (overrides the file's `device`).
    #[arg(long)]
    device: Option<String>,
    /// Overrides the file's `dtype`.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

#[derive(clap::Args)]
struct ExecArgs {
    file: PathBuf,
    #[command(flatten)]
    over: Overrides,
    /// Output directory (overrides the file's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the run already in the output folder (its results,
    /// manifest, plots, examples and saved weights are removed once
    /// this run reaches its first measurement).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the interrupted or failed run in DIR (default: the
    /// output folder): only the steps without results run. The file and
    /// the options must give the same plan. With `--on slurm`, submits
    /// again only the shards without all their results.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    #[allow(clippy::option_option)]
    resume: Option<Option<PathBuf>>,
    /// Exit with status 3 when a claim the experiment declares
    /// (`expect`) is not supported by the results.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    budget: Budget,
    /// Run only shard I of N (`2/15`): the results of its sweep points,
    /// into `--out`; `nngeo report RUN` merges `RUN/shards/I`. A folder
    /// that already holds this shard is resumed.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["on", "overwrite"])]
    shard: Option<String>,
    /// Compute only part J of K of stage STAGE (name or number, default
    /// the first) of the step STEP declared `sharded(k)`, into
    /// `--out RUN` (`RUN/parts/STEP/`); the process that runs the step
    /// reduces the parts.
    #[arg(long, value_name = "STEP[:STAGE]/J/K", conflicts_with_all = ["on", "overwrite", "shard", "resume"])]
    part: Option<String>,
    /// Where to run: `local` (this process) or `slurm` (one job array).
    #[arg(long, value_enum, default_value = "local")]
    on: On,
    #[command(flatten)]
    cluster: cluster_cmd::ClusterArgs,
    /// Where the relative paths of a plan file (FILE ending in `.json`)
    /// start: the folder of the .ngx file it was compiled from (default:
    /// the plan file's folder).
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 8GiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => {
            return Err(format!(
                "unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ))
        }
    };
    if num <= 0.0 {
        return Err("the budget must be positive".into());
    }
    Ok((num * mult) as u64)
}

/// A user error: already explained on stderr.
struct UserError;

fn load(file: &Path, budget: &Budget) -> Result<Plan, UserError> {
    load_with_source(file, budget).map(|(plan, _)| plan)
}

/// The memory budget a run is held to, and where it was given:
/// `--memory-budget`, else the file's `memory_budget`.
fn given_budget(budget: &Budget, plan: &Plan) -> Option<(u64, &'static str)> {
    budget.memory_budget.map(|b| (b, "--memory-budget")).or(plan
        .experiment
        .memory_budget
        .map(|b| (b, "the file's memory_budget")))
}

fn budget_limit(budget: &Budget, plan: &Plan) -> Option<nngeo::exec::limit::Limit> {
    given_budget(budget, plan).map(|(bytes, from)| nngeo::exec::limit::Limit {
        bytes,
        source: format!("the memory budget ({from})"),
    })
}

/// A plan as `nngeo plan --format json` writes it.
fn read_plan(file: &Path) -> Result<Plan, UserError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: cannot read `{}`: {e}", file.display());
        UserError
    })?;
    let plan = Plan::from_json(&text).map_err(|e| {
        eprintln!("error: `{}` is not a plan: {e}", file.display());
        UserError
    })?;
    if plan.format != nngeo::plan::PLAN_FORMAT {
        eprintln!(
            "error: `{}` is a plan of format {}, this nngeo reads format {}",
            file.display(),
            plan.format,
            nngeo::plan::PLAN_FORMAT
        );
        return Err(UserError);
    }
    Ok(plan)
}

fn load_with_source(file: &Path, budget: &Budget) -> Result<(Plan, String), UserError> {
    let src = match nngeo::diag::read_source(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(UserError);
        }
    };
    let mut opts = CheckOptions {
        base_dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        memory_budget: budget.memory_budget,
        ..CheckOptions::default()
    };
    // A broken nngeo.toml is reported where it is needed (exec); here it
    // only adds data folders.
    if let Ok(config) = nngeo::config::load() {
        opts.data_dirs.extend(config.data.paths);
    }
    match nngeo::compile_source_with_warnings(&src, &opts) {
        Ok((plan, warnings)) => {
            if !warnings.is_empty() {
                eprint!("{}", render(&file.display().to_string(), &src, &warnings));
            }
            Ok((plan, src))
        }
        Err(diags) => {
            report(file, &src, &diags);
            Err(UserError)
        }
    }
}

fn report(file: &Path, src: &str, diags: &[Diagnostic]) {
    eprint!("{}", render(&file.display().to_string(), src, diags));
    eprintln!(
        "{}: {} error{}",
        file.display(),
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
}

/// libtorch's OpenMP threads spin at every parallel barrier unless told
/// otherwise: with another process on the cores, the tch plugin's ResNet18
/// KFAC (width 4, n = 1,000) took 24–41 s spinning, 7.1–7.5 s waiting
/// passively, and about the same either way on quiet cores. libgomp reads
/// `OMP_WAIT_POLICY` once, when the plugin's libtorch loads, so it is set
/// here, before any thread exists; a user's own setting wins.
fn passive_openmp() {
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
}

/// A reader that stops early (`nngeo models | head`) ends a command that
/// only prints, quietly, as it does any Unix filter: Rust's runtime
/// ignores SIGPIPE, so `println!` would panic on the closed pipe instead.
/// Not for `exec`, `bench` or a Slurm submission, which write to their
/// children's pipes and must see a child's early exit as an error.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called before any thread exists; it restores the signal's
    // default disposition, which the runtime had set to "ignore".
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A file-size limit (`ulimit -f`) kills a process on its first write past
/// it (SIGXFSZ) and would cut a results line in half. Ignored, the write
/// fails with EFBIG instead, and the run stops naming the file with every
/// finished line whole.
fn write_errors_not_signals() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any thread exists; ignoring a
    // signal installs no handler.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn main() -> ExitCode {
    write_errors_not_signals();
    passive_openmp();
    nngeo::memory::keep_freed_mimalloc_pages();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let prints_only = match &cli.command {
        Command::Exec(_) | Command::Bench { .. } => false,
        Command::Plan { on, .. } => *on != Some(On::Slurm),
        _ => true,
    };
    if prints_only {
        quiet_on_closed_stdout();
    }
    match cli.command {
        Command::Check { files, budget } => {
            let mut failed = false;
            for f in &files {
                match load_with_source(f, &budget) {
                    Ok((plan, src)) => {
                        // A budget that is given holds for the whole run's
                        // peak, not only for each representation.
                        let over = given_budget(&budget, &plan).and_then(|(bytes, from)| {
                            nngeo::exec::limit::over_budget(&plan, bytes, from)
                        });
                        if let Some(d) = over {
                            report(f, &src, &[d]);
                            failed = true;
                        } else {
                            println!("{}: ok ({} steps)", f.display(), plan.steps.len());
                        }
                    }
                    Err(UserError) => failed = true,
                }
            }
            if failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Plan {
            file,
            format,
            budget,
            on,
            cluster,
            over,
            out,
        } => {
            let Ok(mut plan) = load(&file, &budget) else {
                return ExitCode::from(2);
            };
            // Where it would run decides part of the estimate (the
            // backend's process, the dtype), as for `exec`.
            let config = match configure(&mut plan, &over) {
                Ok(c) => c,
                Err(code) => return code,
            };
            plan.reestimate();
            if on == Some(On::Slurm) {
                let out = out.unwrap_or_else(|| PathBuf::from(&plan.experiment.out));
                return cluster_cmd::plan(
                    &plan,
                    &file,
                    &out,
                    &cluster,
                    &config,
                    &node_args(&plan, &budget),
                );
            }
            match format {
                Format::Table => print!("{}", render_table(&plan)),
                Format::Json => println!("{}", plan.to_json()),
                Format::Yaml => print!("{}", plan.to_yaml()),
            }
            ExitCode::SUCCESS
        }
        Command::Exec(args) => exec(args),
        Command::Status { dir } => cluster_cmd::status(&dir),
        Command::Bench {
            cases,
            repeats,
            once,
        } => info_cmd::bench(cases, repeats as usize, once),
        Command::Report { dir, strict } => {
            if nngeo::cluster::is_sharded(&dir) {
                if let Err(code) = cluster_cmd::merge(&dir) {
                    return code;
                }
            }
            report_dir(&dir, strict)
        }
        Command::Backends => info_cmd::backends(),
        Command::Models => info_cmd::models(),
    }
}

/// Applies `--backend/--device/--dtype`, then the environment, then
/// `nngeo.toml`, over the file's header: the machine decides where an
/// experiment runs, the file what it computes.
fn resolve(
    plan: &mut Plan,
    over: &Overrides,
    config: &nngeo::config::Config,
) -> Result<(), String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(b) = over
        .backend
        .clone()
        .or_else(|| env("NNGEO_BACKEND"))
        .or_else(|| config.defaults.backend.clone())
    {
        plan.experiment.backend = b;
    }
    if let Some(d) = over
        .device
        .clone()
        .or_else(|| env("NNGEO_DEVICE"))
        .or_else(|| config.defaults.device.clone())
    {
        let ok = d == "cpu"
            || d == "cuda"
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            return Err(format!("device `{d}`: expected `cpu`, `cuda` or `cuda:N`"));
        }
        plan.experiment.device = d;
    }
    if let Some(t) = over.dtype {
        plan.experiment.dtype = match t {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F64 => Dtype::F64,
        };
    } else if let Some(t) = config.defaults.dtype {
        plan.experiment.dtype = t;
    }
    Ok(())
}

/// Loads `nngeo.toml` and applies it with the flags (see [`resolve`]);
/// an error is printed and gives exit status 2.
fn configure(plan: &mut Plan, over: &Overrides) -> Result<nngeo::config::Config, ExitCode> {
    let config = nngeo::config::load().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    resolve(plan, over, &config).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok(config)
}

/// The options a shard task needs to compile the same plan on its node:
/// the resolved backend, device and dtype, and a budget that was given.
fn node_args(plan: &Plan, budget: &Budget) -> Vec<String> {
    let dtype = match plan.experiment.dtype {
        Dtype::F32 => "f32",
        Dtype::F64 => "f64",
    };
    let mut args = vec![
        "--backend".to_string(),
        plan.experiment.backend.clone(),
        "--device".to_string(),
        plan.experiment.device.clone(),
        "--dtype".to_string(),
        dtype.to_string(),
    ];
    if let Some(b) = budget.memory_budget {
        args.extend(["--memory-budget".to_string(), format!("{b}B")]);
    }
    args
}

/// `nngeo exec`.
fn exec(args: ExecArgs) -> ExitCode {
    let ExecArgs {
        file,
        over,
        out,
        overwrite,
        resume,
        strict,
        budget,
        shard,
        part,
        on,
        cluster,
        base_dir,
    } = args;
    let (out, mut mode) = match (out, resume) {
        (out, None) => (
            out,
            if overwrite {
                nngeo::exec::Mode::Overwrite
            } else {
                nngeo::exec::Mode::New
            },
        ),
        (out, Some(None)) => (out, nngeo::exec::Mode::Resume),
        (Some(o), Some(Some(r))) if o != r => {
            eprintln!(
                "error: --out `{}` and --resume `{}` name different folders",
                o.display(),
                r.display()
            );
            return ExitCode::from(2);
        }
        (_, Some(Some(r))) => (Some(r), nngeo::exec::Mode::Resume),
    };
    // A plan file (`nngeo plan --format json`, a sharded run's plan.json)
    // runs as it was compiled: the tasks of a job array run the plan that
    // was submitted, whatever happened to the .ngx file since.
    let is_plan = file.extension().is_some_and(|e| e == "json");
    let loaded = if is_plan {
        read_plan(&file)
    } else {
        load(&file, &budget)
    };
    let Ok(mut plan) = loaded else {
        return ExitCode::from(2);
    };
    let config = match configure(&mut plan, &over) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let out = out.unwrap_or_else(|| PathBuf::from(&plan.experiment.out));
    // Memory estimates for the dtype this run uses, checked before
    // anything runs or is written.
    plan.reestimate();
    if let Some(part) = part {
        return cluster_cmd::run_part(&plan, &file, &out, &part, &config, base_dir);
    }
    if on == On::Slurm {
        let resume = mode == nngeo::exec::Mode::Resume;
        return cluster_cmd::submit(
            &plan,
            &file,
            &out,
            resume,
            &cluster,
            &config,
            &node_args(&plan, &budget),
        );
    }
    let shard = match shard
        .as_deref()
        .map(|s| cluster_cmd::shard_of(&plan, s, &out))
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let limit = match &shard {
        Some(s) => nngeo::exec::limit::check_of(
            &plan,
            &s.runs,
            budget_limit(&budget, &plan),
            nngeo::exec::limit::available(),
        ),
        None => nngeo::exec::limit::check(
            &plan,
            budget_limit(&budget, &plan),
            nngeo::exec::limit::available(),
        ),
    };
    if let Err(msg) = limit {
        eprintln!("error: {msg}");
        return ExitCode::from(2);
    }
    // A shard's folder that holds this shard already is continued: a task
    // that was cancelled or failed runs again with the same command.
    if shard.is_some() && out.join(nngeo::report::MANIFEST_JSON).exists() {
        mode = nngeo::exec::Mode::Resume;
    }
    let mut be = match nngeo::select::create(&plan.experiment.backend, &config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("note: `nngeo backends` lists what this build finds; `nngeo check` and `nngeo plan` work without a backend");
            return ExitCode::from(1);
        }
    };
    let again_base = base_dir
        .as_ref()
        .map(|d| format!(" --base-dir {}", d.display()))
        .unwrap_or_default();
    let base_dir = base_dir
        .or_else(|| file.parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    let ctx = nngeo::backend::RunContext {
        base_dir,
        out_dir: out.clone(),
    };
    let shard_ref = shard.as_ref().map(nngeo::report::ShardRef::of);
    nngeo::exec::interrupt::install();
    match nngeo::exec::run_shard(&plan, be.as_mut(), &ctx, mode, shard_ref.as_ref()) {
        Ok(summary) => {
            for w in &summary.warnings {
                eprintln!("warning: {w}");
            }
            println!("results in {}", out.display());
            if shard.is_some() {
                // Claims are about the whole run: `nngeo report` evaluates
                // them once the shards are merged.
                return ExitCode::SUCCESS;
            }
            claims_exit(&summary.claims, strict)
        }
        Err(e) => {
            // A failed step is located at the statement it came from.
            let at = e
                .failed_step()
                .and_then(|id| plan.steps.iter().find(|s| s.id.0 == id))
                .map(|s| match is_plan {
                    // A plan's spans are in the .ngx it was compiled from.
                    true => format!("line {}:{} of the source: ", s.span.line, s.span.col),
                    false => format!("{}:{}:{}: ", file.display(), s.span.line, s.span.col),
                })
                .unwrap_or_default();
            eprintln!("error: {at}{e}");
            if e.is_refusal() {
                return ExitCode::from(2);
            }
            if e.left_folder_untouched() {
                eprintln!("note: nothing in {} was changed", out.display());
            } else if e.before_any_step() && mode != nngeo::exec::Mode::Resume {
                eprintln!(
                    "note: no step ran; once {} can be written, run the same command again",
                    out.display()
                );
            } else {
                let again = match &shard {
                    Some(s) => format!(
                        "--shard {}/{} --out {}{again_base}",
                        s.index,
                        s.count,
                        out.display()
                    ),
                    None => format!("--resume {}", out.display()),
                };
                eprintln!(
                    "note: results computed so far are in {}; `nngeo exec {} {again}` continues the run",
                    out.display(),
                    file.display(),
                );
            }
            ExitCode::from(1)
        }
    }
}

/// `nngeo report DIR` once its shards (if any) are merged.
fn report_dir(dir: &Path, strict: bool) -> ExitCode {
    match nngeo::report::rebuild(dir) {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            for f in &r.files {
                println!("{}", f.display());
            }
            claims_exit(&r.claims, strict)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `nngeo models`: the library's models with their parameters.
/// Prints each declared claim's verdict; with `strict`, a claim that the
/// results do not support makes the exit status 3.
fn claims_exit(claims: &[nngeo::report::claims::ClaimOutcome], strict: bool) -> ExitCode {
    if claims.is_empty() {
        return ExitCode::SUCCESS;
    }
    let failed = claims.iter().filter(|c| c.failed()).count();
    println!(
        "claims: {} of {} supported",
        claims.len() - failed,
        claims.len()
    );
    for c in claims {
        let mark = if c.failed() { "✗" } else { "✓" };
        let at =
            c.at.as_deref()
                .map_or(String::new(), |a| format!(" (line {a})"));
        let value = if c.value.is_empty() {
            String::new()
        } else {
            format!(" [{}]", c.value)
        };
        println!("  {mark} {}{at}: {}{value}", c.text, c.verdict);
        if let Some(f) = &c.failing {
            println!("      fails {f}");
        }
    }
    if strict && failed > 0 {
        eprintln!("error: {failed} claim(s) not supported (--strict)");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
