//! Data-parallel training under `mpirun` (Open MPI, installed by `scripts/install_mpi.sh`): two
//! ranks sharing each batch train as one process given the whole batch, a run resumes with
//! another number of ranks, and a rank that dies ends the job with its checkpoints intact.

mod common;
mod train_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{distil_bin, max_abs_diff};
use distil::distill::student::{init_student, StudentArch};
use distil::model::{checkpoint, Checkpoint};
use distil::train::checkpoint as run_checkpoint;
use distil::train::config::RunConfig;
use train_support::*;

/// `mpirun -np N distil ARGS`, allowed to run as root (CI is root) and on more ranks than
/// cores. A missing `mpirun` fails the test with the command that installs it.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "mpirun is missing: run `scripts/install_mpi.sh` (Debian openmpi-bin) first");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()])
        .arg(distil_bin())
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

fn succeed(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_config(config: &RunConfig, path: &Path) -> String {
    std::fs::write(path, config.to_toml().unwrap()).unwrap();
    path.display().to_string()
}

/// Relative difference, with a floor so that values near zero compare absolutely.
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-3)
}

/// The logged steps and exported weights of two runs agree within float tolerance: the
/// ranks' parts of a batch go through matrix products of other shapes, whose sums round
/// differently.
fn assert_same_training(a: &Path, b: &Path) {
    let (sa, sb) = (steps(a), steps(b));
    assert_eq!(sa.len(), sb.len(), "{} and {} logged different numbers of steps", a.display(), b.display());
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!((x.step, x.epoch, x.lr, x.skipped), (y.step, y.epoch, y.lr, y.skipped));
        let pairs = [
            ("total", x.loss.total, y.loss.total),
            ("ce", x.loss.ce, y.loss.ce),
            ("mlm", x.loss.mlm, y.loss.mlm),
            ("cos", x.loss.cos, y.loss.cos),
            ("grad_norm", x.grad_norm, y.grad_norm),
        ];
        for (what, u, v) in pairs {
            assert!(close(u, v, 1e-4), "step {}: {what} {u} vs {v}", x.step);
        }
    }
    let device = Device::Cpu;
    let (wa, wb) = (
        Checkpoint::load(&a.join("student"), &device).unwrap(),
        Checkpoint::load(&b.join("student"), &device).unwrap(),
    );
    for (name, t) in &wa.weights {
        let diff = max_abs_diff(t, &wb.weights[name]);
        assert!(diff < 1e-4, "tensor {name} differs by {diff} after training");
    }
}

/// A distillation pair without dropout (whose masks differ by rank) on the real-text sample.
struct Setup {
    root: PathBuf,
    corpus: PathBuf,
    teacher: PathBuf,
    student: PathBuf,
}

fn setup(root: &Path) -> Setup {
    let corpus = build_corpus(root);
    let teacher = random_teacher(&root.join("teacher"), 0.0);
    let ckpt = Checkpoint::load(&teacher, &Device::Cpu).unwrap();
    let init = init_student(&ckpt, &[1], StudentArch::Same).unwrap();
    let student = root.join("student");
    checkpoint::save(&student, &init.config, &init.weights, Some(&teacher)).unwrap();
    Setup { root: root.to_path_buf(), corpus, teacher, student }
}

impl Setup {
    fn config(&self, name: &str, steps: u64) -> (RunConfig, PathBuf) {
        let out = self.root.join(name);
        let mut config = run_config(Some(&self.teacher), &self.student, &self.corpus, &out, steps, 1e-3);
        config.batch.accumulation = 2;
        (config, out)
    }
}

#[test]
fn two_ranks_train_as_one_process_with_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(tmp.path());
    let (config, one) = s.config("one-rank", 6);
    let toml = write_config(&config, &s.root.join("one.toml"));
    succeed({
        let mut cmd = Command::new(distil_bin());
        cmd.args(["train", "--config", &toml]);
        cmd
    });
    let (mut config, two) = s.config("two-ranks", 6);
    config.out = two.clone();
    let toml = write_config(&config, &s.root.join("two.toml"));
    let out = succeed(mpirun(2, &["train", "--config", &toml]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("training on 2 ranks"), "{stderr}");
    // Rank 0 alone writes: one line per step, one final message.
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("finished 6 steps").count(), 1);
    assert_same_training(&one, &two);

    // Stopped on two ranks, resumed on one: the run ends where the unbroken one did.
    let (mut config, switched) = s.config("switched", 6);
    config.out = switched.clone();
    let toml = write_config(&config, &s.root.join("switched.toml"));
    succeed(mpirun(2, &["train", "--config", &toml, "--stop-after", "3"]));
    succeed({
        let mut cmd = Command::new(distil_bin());
        cmd.args(["train", "--resume", &switched.display().to_string()]);
        cmd
    });
    assert_same_training(&one, &switched);
}

#[test]
fn batches_by_tokens_and_pretraining_share_out_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(tmp.path());
    let run = |name: &str, ranks: usize| {
        let out = s.root.join(name);
        let mut config = run_config(None, &tiny_config(&s.root.join("tiny")), &s.corpus, &out, 4, 1e-2);
        config.batch.tokens = 300;
        let toml = write_config(&config, &s.root.join(format!("{name}.toml")));
        succeed(mpirun(ranks, &["train", "--config", &toml]));
        out
    };
    // Three ranks over batches that do not divide evenly between them.
    let (one, three) = (run("one", 1), run("three", 3));
    assert_same_training(&one, &three);
}

/// The ranks of a running job: (rank, process id) of every process whose environment says it
/// is a rank of the job `mpirun` started.
fn ranks_of(job: &Child) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent's pid is the second field after the parenthesised command name.
        let parent = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
        if parent != Some(&job.id().to_string()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let rank = environ
            .split(|&b| b == 0)
            .find_map(|var| String::from_utf8_lossy(var).strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found
}

#[test]
fn a_rank_that_dies_ends_the_job_and_leaves_the_checkpoints_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(tmp.path());
    let (mut config, out) = s.config("killed", 400);
    config.run.checkpoint_every = 2;
    let toml = write_config(&config, &s.root.join("killed.toml"));
    let mut cmd = mpirun(2, &["train", "--config", &toml]);
    let mut job = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();

    let started = Instant::now();
    while run_checkpoint::list(&out).map_or(true, |c| c.len() < 2) {
        assert!(started.elapsed() < Duration::from_secs(120), "no second checkpoint within two minutes");
        if let Some(status) = job.try_wait().unwrap() {
            let output = job.wait_with_output().unwrap();
            panic!("the job ended ({status}) before it was killed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ranks = ranks_of(&job);
    let (_, pid) = *ranks.iter().find(|(rank, _)| *rank == 1).unwrap_or_else(|| panic!("no rank 1 in {ranks:?}"));
    // SAFETY: sends a signal to a process of this test's own job.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let waited = Instant::now();
    while job.try_wait().unwrap().is_none() {
        assert!(waited.elapsed() < Duration::from_secs(60), "the job went on after rank 1 died");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = job.wait_with_output().unwrap();
    assert!(!output.status.success(), "the job succeeded although a rank was killed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rank 1") || stderr.contains("signal 9"), "mpirun did not say which rank died: {stderr}");
    // Whatever the leader was doing when the job ended, the newest checkpoint is whole.
    let restored = run_checkpoint::load_latest(&out, &Device::Cpu).unwrap();
    assert!(restored.state.step >= 2, "{:?}", restored.state);
}
