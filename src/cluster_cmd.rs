//! The command line of sharded runs: `exec --shard`, `exec --on slurm`,
//! `plan --on slurm`, `status` and the merge before `report`.

use nngeo::cluster::{self, slurm, ShardState};
use nngeo::config::{Config, SlurmSection};
use nngeo::plan::cost::format_bytes;
use nngeo::plan::parts;
use nngeo::plan::shard::{self, Shard};
use nngeo::plan::Plan;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Resources of the Slurm job array (override `nngeo.toml`'s `[slurm]`).
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Split into N shards (default: one per sweep point and replicate,
    /// plus one for the results outside every sweep).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Slurm partition.
    #[arg(long)]
    partition: Option<String>,
    /// Wall-time limit per task (`04:00:00`).
    #[arg(long)]
    time: Option<String>,
    /// CPUs per task.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory per task (`16G`; default: the largest shard's estimate, at
    /// least 1 GiB).
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per task (`--gres=gpu:N`).
    #[arg(long)]
    gpus: Option<u32>,
    /// Slurm account.
    #[arg(long)]
    account: Option<String>,
}

impl ClusterArgs {
    fn resources(&self, config: &Config) -> SlurmSection {
        let c = &config.slurm;
        SlurmSection {
            partition: self.partition.clone().or_else(|| c.partition.clone()),
            time: self.time.clone().or_else(|| c.time.clone()),
            cpus: self.cpus.or(c.cpus),
            mem: self.mem.clone().or_else(|| c.mem.clone()),
            gpus: self.gpus.or(c.gpus),
            account: self.account.clone().or_else(|| c.account.clone()),
            extra: c.extra.clone(),
        }
    }
}

/// `--shard I/N` of `plan`, written to `out`.
pub fn shard_of(plan: &Plan, spec: &str, out: &Path) -> Result<Shard, String> {
    let (i, n) = shard::parse_spec(spec).map_err(|e| e.to_string())?;
    let s = shard::shard(plan, i, n).map_err(|e| e.to_string())?;
    cluster::check_shard_folder(out, plan, i)?;
    Ok(s)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn job_script(
    plan: &Plan,
    file: &Path,
    run: &Path,
    shards: &[Shard],
    resources: SlurmSection,
    exec_args: &[String],
) -> slurm::JobScript {
    slurm::JobScript {
        experiment: plan.experiment.name.clone(),
        plan_hash: plan.hash(),
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nngeo")),
        base_dir: absolute(file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
        run: absolute(run),
        chdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        count: shards.len(),
        exec_args: exec_args.to_vec(),
        resources,
        estimated_bytes: shards.iter().map(|s| s.peak_memory).max().unwrap_or(0),
    }
}

fn shards_of(plan: &Plan, args: &ClusterArgs) -> Result<Vec<Shard>, ExitCode> {
    shard::all(plan, args.shards).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `nngeo plan FILE --on slurm`: the shards and the job script.
pub fn plan(
    plan: &Plan,
    file: &Path,
    out: &Path,
    args: &ClusterArgs,
    config: &Config,
    exec_args: &[String],
) -> ExitCode {
    let shards = match shards_of(plan, args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    print!("{}", render_shards(plan, &shards));
    let script = job_script(plan, file, out, &shards, args.resources(config), exec_args);
    let sharded = parts::sharded_steps(plan);
    if !sharded.is_empty() {
        print!("{}", cluster::parts::render_plan(plan, &sharded));
    }
    println!(
        "\njob script ({}):",
        out.join("slurm/array.sbatch").display()
    );
    print!("{}", script.render());
    for sh in &sharded {
        let costs = cluster::parts::stage_costs(plan, sh);
        for (st, c) in sh.stages.iter().zip(costs) {
            println!(
                "\njob script ({}):",
                out.join(part_script(sh.step.0, st.name)).display()
            );
            print!(
                "{}",
                script.render_part(sh.step.0, st.name, st.parts, c.peak_memory)
            );
        }
    }
    ExitCode::SUCCESS
}

/// `slurm/part-STEP-STAGE.sbatch`.
fn part_script(step: u32, stage: &str) -> PathBuf {
    Path::new(cluster::SLURM_DIR).join(format!("part-{step}-{stage}.sbatch"))
}

/// Submits the part arrays of the plan's sharded steps, stage after
/// stage, and records them in `shards.json`. A resume submits only the
/// parts without a file that are not pending or running in Slurm, and
/// every part of the stages after one it submitted (they depend on it).
/// Returns the jobs the shards' array must wait for: each step's last
/// stage.
fn submit_parts(
    plan: &Plan,
    run: &Path,
    sf: &mut cluster::ShardsFile,
    script: &slurm::JobScript,
    resume: bool,
) -> Result<Vec<String>, String> {
    let states = if resume {
        let (slurm_states, warnings) = slurm::run_states(sf);
        for w in warnings {
            eprintln!("warning: {w}");
        }
        cluster::parts::part_states(run, plan, Some(sf), &slurm_states)
    } else {
        Vec::new()
    };
    let mut after = Vec::new();
    for sh in parts::sharded_steps(plan) {
        let costs = cluster::parts::stage_costs(plan, &sh);
        // The jobs the next stage waits for; whether a stage before was
        // submitted now (then every later part is computed again).
        let mut prev: Vec<String> = Vec::new();
        let mut again = false;
        for (st, c) in sh.stages.iter().zip(costs) {
            let path = run.join(part_script(sh.step.0, st.name));
            std::fs::write(
                &path,
                script.render_part(sh.step.0, st.name, st.parts, c.peak_memory),
            )
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            let known = states
                .iter()
                .find(|s| s.step == sh.step.0 && s.stage == st.name);
            let (tasks, live) = match known {
                Some(k) if !again => (k.rerun(), k.live_jobs()),
                _ => ((0..st.parts).collect(), Vec::new()),
            };
            let mut waits = live;
            if !tasks.is_empty() {
                let id = slurm::submit_after(&path, &tasks, &prev).map_err(|e| e.to_string())?;
                println!(
                    "submitted Slurm job {id}: step #{} stage `{}`, {} part task(s) ({}){}",
                    sh.step.0,
                    st.name,
                    tasks.len(),
                    cluster::list(&tasks),
                    if prev.is_empty() {
                        String::new()
                    } else {
                        format!(" after job {}", prev.join(", "))
                    }
                );
                sf.part_submissions.push(cluster::PartSubmission {
                    step: sh.step.0,
                    stage: st.name.to_string(),
                    job_id: id.clone(),
                    tasks,
                    submitted: nngeo::report::now_rfc3339(),
                });
                sf.write(run).map_err(|e| e.to_string())?;
                waits.push(id);
                again = true;
            }
            prev = waits;
        }
        after.extend(prev);
    }
    Ok(after)
}

/// The shard table of `plan --on slurm`.
pub fn render_shards(plan: &Plan, shards: &[Shard]) -> String {
    let mut s = format!(
        "{} shard(s) of `{}`; steps outside every sweep that a shard needs are recomputed there\n",
        shards.len(),
        plan.experiment.name
    );
    s.push_str(&format!(
        "{:>5}  {:>9}  {:>10}  units\n",
        "shard", "memory", "GFLOP"
    ));
    for sh in shards {
        let units: Vec<String> = sh.units.iter().map(|u| u.label()).collect();
        s.push_str(&format!(
            "{:>5}  {:>9}  {:>10.3}  {}\n",
            sh.index,
            format_bytes(sh.peak_memory),
            sh.flops as f64 / 1e9,
            units.join("; ")
        ));
        if !sh.recomputed.is_empty() {
            let names: Vec<String> = sh
                .recomputed
                .iter()
                .map(|id| {
                    let step = plan.step(*id);
                    format!(
                        "#{} (line {}, {:.3} GFLOP)",
                        id.0,
                        step.span.line,
                        step.cost.flops as f64 / 1e9
                    )
                })
                .collect();
            s.push_str(&format!("       recomputes {}\n", names.join(", ")));
        }
    }
    s
}

/// `nngeo exec FILE --on slurm [--resume RUN]`.
pub fn submit(
    plan: &Plan,
    file: &Path,
    run: &Path,
    resume: bool,
    args: &ClusterArgs,
    config: &Config,
    exec_args: &[String],
) -> ExitCode {
    let shards = match shards_of(plan, args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut sf = match cluster::prepare(run, plan, file, &shards, resume) {
        Ok(sf) => sf,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if resume && args.shards.is_some_and(|n| n != sf.count) {
        eprintln!(
            "error: `{}` was split into {} shards, not {}",
            run.display(),
            sf.count,
            args.shards.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    // The script is (re)written each time, so a resume may change the
    // resources (a longer --time after a TIMEOUT).
    let script = job_script(plan, file, run, &shards, args.resources(config), exec_args);
    let path = run.join(cluster::SLURM_DIR).join("array.sbatch");
    if let Err(e) = std::fs::create_dir_all(run.join(cluster::SLURM_DIR).join("logs"))
        .and_then(|_| std::fs::write(&path, script.render()))
    {
        eprintln!("error: cannot write `{}`: {e}", path.display());
        return ExitCode::from(1);
    }
    let tasks: Vec<usize> = if resume {
        let (states, warnings) = slurm::run_states(&sf);
        for w in warnings {
            eprintln!("warning: {w}");
        }
        match cluster::shard_states(run, &sf, &states) {
            Ok(st) => st
                .iter()
                .filter(|s| s.state.needs_rerun())
                .map(|s| s.index)
                .collect(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        (0..sf.count).collect()
    };
    if tasks.is_empty() {
        println!(
            "every shard of {} is done or still queued; `nngeo report {}` merges them",
            run.display(),
            run.display()
        );
        return ExitCode::SUCCESS;
    }
    let after = match submit_parts(plan, run, &mut sf, &script, resume) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match slurm::submit_tasks(run, &mut sf, &tasks, &after) {
        Ok(id) => {
            println!(
                "submitted Slurm job {id}: {} task(s) ({}) of {} shard(s)",
                tasks.len(),
                cluster::list(&tasks),
                sf.count
            );
            println!("run folder: {}", run.display());
            println!(
                "follow it with `nngeo status {}`; merge it with `nngeo report {}`",
                run.display(),
                run.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "note: nothing was submitted; `{}` is ready: `nngeo exec {} --on slurm --resume {}` submits it",
                run.display(),
                file.display(),
                run.display()
            );
            ExitCode::from(1)
        }
    }
}

/// `nngeo status RUN`.
pub fn status(run: &Path) -> ExitCode {
    let sf = match cluster::describe(run) {
        Ok(sf) => sf,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (states, warnings) = slurm::run_states(&sf);
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let shards = match cluster::shard_states(run, &sf, &states) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let jobs: Vec<&str> = sf.job_ids().collect();
    println!(
        "{}: experiment `{}`, {} shard(s){}",
        run.display(),
        sf.experiment,
        sf.count,
        if jobs.is_empty() {
            String::new()
        } else {
            format!(", Slurm job(s) {}", jobs.join(", "))
        }
    );
    println!(
        "{:>5}  {:<12} {:>7}  {:<12} units",
        "shard", "state", "results", "task"
    );
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in &shards {
        *counts.entry(s.state.word()).or_default() += 1;
        println!(
            "{:>5}  {:<12} {:>7}  {:<12} {}",
            s.index,
            s.state.word(),
            s.lines,
            s.job.as_deref().unwrap_or("-"),
            s.units.join("; ")
        );
        if let ShardState::Failed(why) = &s.state {
            println!("       failed: {}", why.lines().next().unwrap_or(""));
        }
        if matches!(
            s.state,
            ShardState::Failed(_) | ShardState::Cancelled | ShardState::Interrupted
        ) {
            if let Some(log) = &s.log {
                println!("       log: {}", log.display());
                for line in cluster::state::log_tail(log, 3) {
                    println!("       | {line}");
                }
            }
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("{}", summary.join(", "));
    // The parts of the steps sharded over data, when the plan has some.
    let stages = cluster::plan_of(run)
        .map(|plan| cluster::parts::part_states(run, &plan, Some(&sf), &states))
        .unwrap_or_default();
    print!("{}", cluster::parts::render_states(run, &stages));
    let rerun = shards.iter().filter(|s| s.state.needs_rerun()).count();
    let parts_rerun: usize = stages.iter().map(|s| s.rerun().len()).sum();
    if rerun > 0 && !sf.submissions.is_empty() {
        println!(
            "`nngeo exec {} --on slurm --resume {}` submits the {rerun} shard(s) without results again{}",
            sf.file.display(),
            run.display(),
            if parts_rerun > 0 {
                format!(", after the {parts_rerun} part(s) without a file")
            } else {
                String::new()
            }
        );
    }
    ExitCode::SUCCESS
}

/// Merges a sharded run's shards before `report` rebuilds it.
pub fn merge(run: &Path) -> Result<(), ExitCode> {
    match cluster::merge(run) {
        Ok(m) => {
            for w in &m.warnings {
                eprintln!("warning: {w}");
            }
            if !m.missing.is_empty() {
                eprintln!(
                    "warning: {} of {} shard(s) are not complete ({}): the merged results lack them; `nngeo status {}` says why",
                    m.missing.len(),
                    m.count,
                    cluster::list(&m.missing),
                    run.display()
                );
            }
            eprintln!(
                "merged {} of {} shard(s): {} result line(s)",
                m.complete.len(),
                m.count,
                m.lines
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// `nngeo exec FILE --part STEP[:STAGE]/J/K --out RUN`.
pub fn run_part(
    plan: &Plan,
    file: &Path,
    run: &Path,
    spec: &str,
    config: &Config,
    base_dir: Option<PathBuf>,
) -> ExitCode {
    let spec = match nngeo::plan::parts::parse(plan, spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut be = match nngeo::select::create(&plan.experiment.backend, config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let base_dir = base_dir
        .or_else(|| file.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    match nngeo::exec::part::run_part(plan, be.as_mut(), &base_dir, run, &spec) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
