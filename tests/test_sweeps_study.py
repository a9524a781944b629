"""The Optuna study and the sweep around it: integer search spaces, failed trials, a study left
broken by an older sweeper, several processes opening one new SQLite study, the sweeper's
direction, and a SLURM launcher where there is no SLURM."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_sweeps import REPO, load_study, optuna_cmd, read_summary, summary, sweep_env, train_cmd  # noqa: E402

ONLY_BINS = ["optimizer.lr=1e-3", "optimizer.weight_decay=0", "model.encoder_name=resnet18"]


def run(cmd, cache, **env):
    return subprocess.run(cmd, cwd=REPO, env=sweep_env(cache, **env), capture_output=True,
                          text=True, timeout=600)


# ---------------------------------------------------------------------------------------------
# Integer intervals

def test_int_intervals_are_optuna_int_distributions():
    from optuna.distributions import FloatDistribution, IntDistribution

    from event_seg.optuna_search import search_space

    space, _ = search_space({"dataset.num_bins": "int(interval(2, 6))",
                             "trainer.batch_size": "tag(log, int(interval(2, 64)))",
                             "optimizer.lr": "interval(1, 2)"}, [])
    assert space["dataset.num_bins"] == IntDistribution(2, 6)
    assert space["trainer.batch_size"] == IntDistribution(2, 64, log=True)
    assert space["optimizer.lr"] == FloatDistribution(1.0, 2.0)  # Hydra's interval: floats


def test_ranges_draw_what_hydra_would_sweep_and_a_log_range_is_log_scale():
    from optuna.distributions import FloatDistribution, IntDistribution

    from event_seg.errors import ConfigError
    from event_seg.optuna_search import search_space

    def space(value):
        return search_space({"dataset.num_bins": value}, [])[0]["dataset.num_bins"]

    assert space("range(2, 11, 4)") == IntDistribution(2, 10, step=4)
    assert space("range(5, 1, -1)") == IntDistribution(2, 5)  # Hydra sweeps 5, 4, 3, 2
    assert space("range(0.1, 0.5, 0.1)") == FloatDistribution(0.1, 0.4, step=0.1)
    assert space("range(0.5, 0.1, -0.1)") == FloatDistribution(0.2, 0.5, step=0.1)
    assert space("tag(log, range(1, 65))") == IntDistribution(1, 64, log=True)
    for value, why in [("range(1, 10, 0)", "step 0"), ("range(3, 3)", "holds no value"),
                       ("range(1, 5, -1)", "holds no value"),
                       ("tag(log, range(1, 64, 2))", "log scale"),
                       ("tag(log, range(0, 8))", "log scale")]:
        with pytest.raises(ConfigError, match=rf"^dataset.num_bins={re.escape(value)}: .*{why}"):
            space(value)


def test_each_trials_values_reach_its_job_as_drawn():
    """A trial's values are handed to Hydra as override text: a choice with a comma, a space
    or an '=' must reach the job as that string (unescaped, 'x,y' made Hydra refuse the
    trial's job as an ambiguous sweep, and the whole search ended), a list as that list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from event_seg.optuna_search import _space, trial_overrides

    params = {"model.name": "choice('a,b', 'p q', 'x=y', plain)",
              "dataset.size": "choice([32,64], [64,128])",
              "dataset.num_bins": "int(interval(2, 6))", "optimizer.lr": "interval(1e-4, 1e-2)",
              "trainer.deterministic": "choice(true, false)"}
    space, _, _, texts = _space(params, [])
    drawn = [{"model.name": name, "dataset.size": size, "dataset.num_bins": 3,
              "optimizer.lr": 1e-05, "trainer.deterministic": flag}
             for name, size, flag in zip(space["model.name"].choices,
                                         space["dataset.size"].choices * 2, (True, False) * 2)]
    parser = OverridesParser.create()
    for values in drawn:
        parsed = parser.parse_overrides(trial_overrides(values, texts))
        assert not any(o.is_sweep_override() for o in parsed)
        got = {o.get_key_element(): o.value() for o in parsed}
        assert got["model.name"] == values["model.name"]
        assert got["dataset.size"] in ([32, 64], [64, 128])
        assert got["dataset.num_bins"] == 3 and got["optimizer.lr"] == 1e-05
        assert got["trainer.deterministic"] is values["trainer.deterministic"]


def test_searched_values_are_checked_as_the_job_reads_them():
    """The values of a choice are checked as the job's override reads them: a list is a list
    (the check set the text '[0.9,1.1]' on a list key and refused a search that runs)."""
    from test_config import compose

    from event_seg.errors import ConfigError
    from event_seg.optuna_search import check_settings

    cfg = compose(["hparams_search=optuna"])

    def check(*arguments):
        check_settings(cfg.hydra.sweeper, cfg.optimized_metric, list(arguments), cfg=cfg)

    check("dataset.augment.scale=choice([0.9,1.1],[0.8,1.2])", "model.name=choice('a,b', c)")
    with pytest.raises(ConfigError, match=r"^dataset.augment.scale=choice\(\[0.9\],\[0.8,1.2\]\): "
                                          r"a trial would set dataset.augment.scale=\[0.9\]"):
        check("dataset.augment.scale=choice([0.9],[0.8,1.2])")


def test_a_float_interval_for_an_integer_key_is_refused_in_one_line(tmp_path, cache):
    proc = run(optuna_cmd(tmp_path, "dataset.num_bins=interval(2, 6)"), cache)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: dataset.num_bins=interval(2, 6) draws floats") and \
        "int(interval(2, 6))" in line, line
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").iterdir())


def test_a_launcher_that_fails_fails_its_trials_and_a_stop_hands_them_back(tmp_path):
    """A job the launcher could not run is a failed trial (a re-run does not run it again); a
    stopped sweep (Ctrl-C) queues its batch again for the other processes."""
    from omegaconf import OmegaConf

    from event_seg import optuna_search as search
    from hydra_plugins.event_seg_sweeper.optuna_sweeper import EventSegOptunaSweeperConf

    class Launcher:  # where Hydra's launcher would start the job, this one cannot
        def __init__(self, error):
            self.error = error

        def launch(self, overrides, initial_job_idx):
            raise self.error

    settings = OmegaConf.merge(OmegaConf.structured(EventSegOptunaSweeperConf), {
        "storage": str(tmp_path / "study.db"), "study_name": "s", "n_trials": 3,
        "params": {"dataset.num_bins": "int(interval(2, 6))"}})
    config = OmegaConf.create({"optimized_metric": "best_val_mean_iou"})
    with pytest.raises(RuntimeError, match="no such partition"):
        search.OptunaSearch(settings, config, Launcher(RuntimeError("no such partition")),
                            tmp_path).run([])
    [trial] = load_study(f"sqlite:///{tmp_path / 'study.db'}", "s").trials
    assert trial.state.name == "FAIL" and search.REQUEUED not in trial.system_attrs

    with pytest.raises(KeyboardInterrupt):
        search.OptunaSearch(settings, config, Launcher(KeyboardInterrupt()), tmp_path).run([])
    trials = load_study(f"sqlite:///{tmp_path / 'study.db'}", "s").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"]
    assert trials[1].system_attrs[search.REQUEUED] and trials[2].user_attrs["requeued_from"] == 1


# ---------------------------------------------------------------------------------------------
# A study that an older sweeper left broken goes on

def broken_study(db: Path, name: str) -> None:
    """What the sweeper of before left after 'dataset.num_bins=int(interval(2, 6))': trial 0
    drew a float from a FloatDistribution, its job could not start, and it was failed and
    queued again as if the sweep had been stopped (trial 1 waits with the same float)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from event_seg import optuna_search as search

    study = optuna.create_study(storage=f"sqlite:///{db}", study_name=name, direction="maximize")
    study.set_user_attr(search.METRIC, "best_val_mean_iou")
    params = {"optimizer.lr": 3.57e-4, "dataset.num_bins": 2.624074561769746}
    study.enqueue_trial(params)
    trial = study.ask({"optimizer.lr": FloatDistribution(1e-4, 3e-3, log=True),
                       "dataset.num_bins": FloatDistribution(2.0, 6.0)})
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, search.OWNER, "gone-host 1 /gone")
    storage.set_trial_system_attr(trial._trial_id, search.REQUEUED, True)
    storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"requeued_from": 0})


@pytest.mark.parametrize("bins", ["int(interval(2, 6))", "choice(3,5)"])
def test_a_study_broken_by_a_float_draw_for_an_integer_goes_on(tmp_path, cache, bins):
    db = tmp_path / "study.db"
    broken_study(db, "broken")
    proc = run(optuna_cmd(tmp_path, *ONLY_BINS, f"dataset.num_bins={bins}",
                          "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={db}",
                          "hydra.sweeper.study_name=broken", "trial_timestamp=go_on"), cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "does not fit" not in output and "Traceback" not in output
    # The queued float is not run again (it would fail again, forever) ...
    assert "Trial 1 queued with dataset.num_bins=2.624074561769746" in output
    trials = load_study(f"sqlite:///{db}", "broken").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert "job_dir" not in trials[1].user_attrs
    # ... and the study goes on with integers, each told its job's value.
    new = trials[2]
    assert isinstance(new.params["dataset.num_bins"], int)
    assert new.params["dataset.num_bins"] in ((3, 5) if bins.startswith("choice") else range(2, 7))
    assert new.value == summary(Path(new.user_attrs["job_dir"]))["best_val_mean_iou"]
    # The old float draw is kept where a person reads it, not where Optuna compares spaces.
    assert trials[0].system_attrs["event_seg:dropped_params"] == {
        "dataset.num_bins": 2.624074561769746}


def test_a_broken_journal_study_is_refused_in_one_line_before_any_trial(tmp_path):
    """A journal is append-only: the failed trial's float draw cannot be forgotten there."""
    import optuna
    from omegaconf import OmegaConf
    from optuna.distributions import FloatDistribution
    from optuna.storages.journal import JournalFileBackend

    from event_seg.errors import ConfigError
    from event_seg.optuna_search import OptunaSearch
    from hydra_plugins.event_seg_sweeper.optuna_sweeper import EventSegOptunaSweeperConf

    journal = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name="broken", direction="maximize")
    study.set_user_attr("optimized_metric", "best_val_mean_iou")
    trial = study.ask({"dataset.num_bins": FloatDistribution(2.0, 6.0)})
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    settings = OmegaConf.merge(OmegaConf.structured(EventSegOptunaSweeperConf), {
        "storage": str(journal), "study_name": "broken",
        "params": {"dataset.num_bins": "int(interval(2, 6))"}})
    search = OptunaSearch(settings, OmegaConf.create({"optimized_metric": "best_val_mean_iou"}),
                          None, tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset.num_bins: failed trial\(s\) 0 of study "
                                          r"broken drew it from another kind of distribution, "
                                          r"and a journal .* cannot forget a draw"):
        search.run([])
    [kept] = load_study(str(journal), "broken").trials  # no trial asked, none changed
    assert kept.state.name == "FAIL" and set(kept.params) == {"dataset.num_bins"}


# ---------------------------------------------------------------------------------------------
# Several sweepers opening one new SQLite study at once

OPEN_STUDY = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from event_seg.optuna_search import OptunaSearch
from event_seg.errors import ConfigError
from hydra_plugins.event_seg_sweeper.optuna_sweeper import EventSegOptunaSweeperConf

root, me, n, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for r in range(rounds):  # each round: a new file, opened by all processes at the same moment
    folder = root / f"try{r}"
    folder.mkdir(exist_ok=True)
    settings = OmegaConf.merge(OmegaConf.structured(EventSegOptunaSweeperConf),
                               {"storage": str(folder / "study.db"), "study_name": "together",
                                "seed": 0})
    search = OptunaSearch(settings, OmegaConf.create({"optimized_metric": "best_val_mean_iou"}),
                          None, folder / me)
    (folder / f"ready{me}").touch()
    while len(list(folder.glob("ready*"))) < n:
        time.sleep(0.001)
    try:
        study, created, where = search.open()
        print("created" if created else "joined", flush=True)
    except ConfigError as e:  # said, and on to the next round (the others wait for us there)
        print(f"error: {e}", flush=True)
"""


def test_four_sweepers_opening_one_new_sqlite_study_at_once_all_get_it(tmp_path):
    """Optuna's own schema set-up races (UNIQUE constraint failed: alembic_version, table
    already exists): four processes opening a new SQLite study together failed in 4 of 6
    tries without the lock; five tries in a row must all succeed."""
    script, rounds = tmp_path / "open_study.py", 5
    script.write_text(OPEN_STUDY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(i), "4",
                               str(rounds)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(4)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:  # one that crashed leaves the others waiting for it: end them
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    assert "error:" not in "".join(outputs), "\n".join(outputs)
    said = [[line for line in o.splitlines() if line in ("created", "joined")] for o in outputs]
    for r in range(rounds):  # one process created each study, the other three joined it
        assert sorted(s[r] for s in said) == ["created"] + ["joined"] * 3, outputs
        assert load_study(f"sqlite:///{tmp_path / f'try{r}' / 'study.db'}",
                          "together").user_attrs == {"optimized_metric": "best_val_mean_iou"}


def open_search(tmp_path, storage):
    from omegaconf import OmegaConf

    from event_seg.optuna_search import OptunaSearch
    from hydra_plugins.event_seg_sweeper.optuna_sweeper import EventSegOptunaSweeperConf

    settings = OmegaConf.merge(OmegaConf.structured(EventSegOptunaSweeperConf),
                               {"storage": storage, "study_name": "s"})
    return OptunaSearch(settings, OmegaConf.create({"optimized_metric": "best_val_mean_iou"}),
                        None, tmp_path / "sweep").open()


def test_a_storage_whose_lock_cannot_be_made_is_one_line(tmp_path):
    """The lock beside the file is made first: where it cannot be (a file where its folder
    should be, a folder this user may not write in), the storage is refused in one line."""
    from event_seg.errors import ConfigError

    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.storage=.*notes.txt/study.db: cannot "
                                          r"open it as an Optuna storage \(FileExistsError"):
        open_search(tmp_path, str(tmp_path / "notes.txt" / "study.db"))


def test_a_sqlite_url_with_a_driver_or_a_query_shares_the_files_lock(tmp_path):
    from event_seg.optuna_search import sqlite_file

    db = tmp_path / "study.db"
    for url in (f"sqlite:///{db}", f"sqlite+pysqlite:///{db}", f"sqlite:///{db}?timeout=5",
                str(db)):
        assert sqlite_file(url, tmp_path) == db, url
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql://u@localhost/db",
                str(tmp_path / "study.log")):
        assert sqlite_file(url, tmp_path) is None, url
    open_search(tmp_path, f"sqlite:///{db}?timeout=5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db", "study.db.lock"]


# ---------------------------------------------------------------------------------------------
# The sweeper's direction ranks the summary

def test_the_summary_ranks_by_the_sweepers_direction_and_says_it_contradicts_the_metric(
        tmp_path, cache):
    proc = run(optuna_cmd(tmp_path, "model.encoder_name=resnet18", "dataset.num_bins=3",
                          "optimized_metric=best_val_loss", "hydra.sweeper.direction=maximize",
                          "hydra.sweeper.n_trials=2", "trial_timestamp=dir"), cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "hydra.sweeper.direction=maximize for optimized_metric=best_val_loss, which is " \
           "usually minimized" in output
    sweep = tmp_path / "multirun" / "dir"
    assert load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_dir").direction.name == \
        "MAXIMIZE"
    rows = read_summary(sweep)
    losses = [float(r["best_val_loss"]) for r in rows]
    assert len(losses) == 2 and losses == sorted(losses, reverse=True)  # highest first, as asked
    for job in sweep.glob("*/job_status.json"):
        assert json.loads(job.read_text())["direction"] == "maximize"


# ---------------------------------------------------------------------------------------------
# SLURM where there is none

def test_the_slurm_launcher_without_slurm_is_one_line_and_leaves_no_folder(tmp_path, cache):
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if shutil.which("srun", path=path) or shutil.which("sbatch", path=path):
        pytest.skip("SLURM is installed here")
    proc = subprocess.run(train_cmd(tmp_path, "hydra/launcher=slurm", "optimizer.lr=1e-3,3e-4"),
                          cwd=REPO, env=sweep_env(cache, PATH=path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: hydra/launcher=slurm submits jobs with SLURM") and \
        "srun" in line and "submitit_local" in line, line
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").iterdir())
