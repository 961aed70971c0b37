"""bench/long_tail_study.py's analysis: paired differences with a t-test, group gradient ratios, profiles."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from ltdet.data.synthetic import generate
from ltdet.engine.grad_stats_file import write_grad_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("long_tail_study", os.path.join(REPO, "bench", "long_tail_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(values):
    return {str(seed): {"AP": ap, "APr": apr, "APc": 10.0, "APf": 20.0} for seed, (ap, apr) in enumerate(values)}


def test_paired_differences_and_t_test(study):
    stats = pytest.importorskip("scipy.stats")
    base = [(20.0, 1.0), (22.0, 0.0), (21.0, 2.0)]
    method = [(21.0, 6.0), (23.2, 4.5), (21.9, 7.5)]  # AP +1.0 +1.2 +0.9: small but consistent
    results = {"faster_rcnn_sigmoid": {"runs": _runs(base)},
               "faster_rcnn_eqlv2": {"runs": {**_runs(method), "7": {"AP": 50.0}}}}  # seed 7: no baseline
    table = study.paired_differences(results, ["faster_rcnn_sigmoid", "faster_rcnn_eqlv2"])
    paired = results["faster_rcnn_eqlv2"]["paired"]
    assert paired["baseline"] == "faster_rcnn_sigmoid" and paired["seeds"] == [0, 1, 2]
    for key in ("AP", "APr"):
        a = np.array([m[0 if key == "AP" else 1] for m in method])
        b = np.array([m[0 if key == "AP" else 1] for m in base])
        assert paired[key]["differences"] == pytest.approx((a - b).tolist())
        assert paired[key]["mean"] == pytest.approx((a - b).mean())
        assert paired[key]["std"] == pytest.approx((a - b).std(ddof=1))
        assert paired[key]["significant"] == (stats.ttest_rel(a, b).pvalue < 0.05)
    assert paired["AP"]["significant"] and paired["APr"]["significant"]
    assert not paired["APc"]["significant"]  # no spread, no difference
    assert "| faster_rcnn_eqlv2 | sigmoid | 3 |" in table and "+1.0 +1.2 +0.9" in table
    # a noisy difference of the same mean is not significant
    noisy = {"faster_rcnn_sigmoid": {"runs": _runs(base)},
             "faster_rcnn_eqlv2": {"runs": _runs([(24.0, 1.0), (19.0, 0.0), (23.3, 2.0)])}}
    study.paired_differences(noisy, ["faster_rcnn_eqlv2"])
    assert noisy["faster_rcnn_eqlv2"]["paired"]["AP"]["mean"] == pytest.approx(1.1)
    assert not noisy["faster_rcnn_eqlv2"]["paired"]["AP"]["significant"]
    assert study.T_CRITICAL_95[1] == pytest.approx(stats.t.ppf(0.975, 2), abs=1e-3)
    # a pair of runs trained on other machines is marked; runs without a recorded machine count as one machine
    results["faster_rcnn_sigmoid"]["machines"] = {"0": "cpu A", "1": None, "2": "cpu A"}
    results["faster_rcnn_eqlv2"]["machines"] = {"0": "cpu A", "1": None, "2": "cpu B", "7": "cpu B"}
    table = study.paired_differences(results, ["faster_rcnn_eqlv2"])
    assert results["faster_rcnn_eqlv2"]["paired"]["other_machine_seeds"] == [2]
    assert "+1.0 +1.2 +0.9†" in table


def test_group_gradient_ratios_from_grad_stats(study, tmp_path):
    run = tmp_path / "faster_rcnn_sigmoid" / "seed0"
    run.mkdir(parents=True)
    pos, neg = [1.0, 2.0, 3.0, 8.0, 0.5], [10.0, 10.0, 6.0, 8.0, 0.0]  # class 4: no negatives, left out
    write_grad_stats(str(run), {"groups": [0, 0, 1, 2, 2], "group_names": ["rare", "common", "frequent"],
                                "stats": {"roi_heads": {"pos": pos, "neg": neg}}})
    assert study.group_gradient_ratios(str(run)) == pytest.approx({"rare": 0.15, "common": 0.5, "frequent": 1.0})
    assert study.group_gradient_ratios(str(tmp_path / "missing")) is None
    ratios = {"faster_rcnn_sigmoid": {0: study.group_gradient_ratios(str(run)), 1: None}}
    results = {"faster_rcnn_sigmoid": {"runs": {}}}
    study.gradient_ratio_table(results, ["faster_rcnn_sigmoid"], ratios)
    assert "grad_ratio" not in results["faster_rcnn_sigmoid"]  # seed 0 not finished: its statistics are partial
    results = {"faster_rcnn_sigmoid": {"runs": {"0": {"AP": 1.0}}}}
    table = study.gradient_ratio_table(results, ["faster_rcnn_sigmoid"], ratios)
    assert results["faster_rcnn_sigmoid"]["grad_ratio"]["mean"]["rare"] == pytest.approx(0.15)
    assert "| faster_rcnn_sigmoid | 1 | 0.150 | 0.500 | 1.000 |" in table


def test_profiles_scale_schedules_and_override_the_dataset(study):
    assert set(study.COMPARED_WITH) <= set(study.METHODS)
    assert set(study.COMPARED_WITH.values()) <= set(study.METHODS)
    profile = study.PROFILES["lvis_like"]
    max_iter, opts = study.run_schedule("faster_rcnn_sigmoid", scale=profile.schedule_scale["two_stage"])
    base = study.load_method_config("faster_rcnn_sigmoid").SOLVER
    assert max_iter == round(base.MAX_ITER * 1.5)
    assert opts[opts.index("SOLVER.STEPS") + 1] == str(tuple(round(s * 1.5) for s in base.STEPS))
    assert study.run_schedule("faster_rcnn_sigmoid") == (base.MAX_ITER, [])
    assert study.run_schedule("atss_focal", max_iter=4)[0] == 4
    args = study.parse_args(["--profile", "lvis_like"])
    assert "faster_rcnn_acsl_end2end" not in args.methods and "faster_rcnn_crt" in args.methods
    assert args.out == "output/lvis_like_study"
    assert study.parse_args([]).methods == list(study.METHODS)
    for family, opts in profile.opts.items():
        pairs = dict(zip(opts[::2], opts[1::2]))
        assert pairs["DATASETS.TRAIN"] == '("synthetic_lvis_train",)'


def test_lvis_like_eql_threshold_holds_exactly_the_rare_and_common_classes(study):
    # EQL Tab. 1: λ "set as 1.76e-3 to include all the rare and common categories" of LVIS v0.5
    from ltdet.data.synthetic_lvis import lvis_like_targets

    opts = study.PROFILES["lvis_like"].method_opts["faster_rcnn_eql"]
    lambda_ = float(dict(zip(opts[::2], opts[1::2]))["LTDET.EQL.LAMBDA"])
    # EQL's f_j: image count / annotated images (the generator leaves 1% of the 20,000 images empty)
    frequency = lvis_like_targets(20000, 101, 115, 84) / (20000 - 20000 // 100)
    assert (frequency[101:] < lambda_).all() and (frequency[:101] >= lambda_).all()


def test_norcal_sweep_command_and_results(study, tmp_path):
    from detectron2.engine import default_argument_parser

    run = tmp_path / "faster_rcnn_softmax" / "seed0"
    cmd = study.norcal_command("faster_rcnn_softmax", str(run), ["SOLVER.IMS_PER_BATCH", "16", "SEED", "0"], [0.5, 1])
    args = default_argument_parser().parse_args(cmd[2:])
    assert args.eval_only and args.config_file.endswith("configs/synthetic/faster_rcnn_softmax.yaml")
    opts = dict(zip(args.opts[::2], args.opts[1::2]))
    assert opts["MODEL.WEIGHTS"] == str(run / "model_final.pth") and opts["OUTPUT_DIR"] == str(run / "norcal")
    assert opts["LTDET.TEST.NORCAL.GAMMAS"] == "[0.5, 1.0]" and opts["SOLVER.IMS_PER_BATCH"] == "16"
    (run / "norcal").mkdir(parents=True)
    assert study.norcal_metrics(str(run), [0.5]) is None  # no sweep yet
    bbox = {"AP": 23.8, "APr": 1.6}
    sweep = {"gammas": [0.5, 1.0], "results": {"norcal_gamma=0.5": {"bbox": bbox},
                                                "norcal_gamma=1": {"synthetic_lvis_val": {"bbox": {"AP": 24.0}}}}}
    (run / "norcal" / "norcal_sweep.json").write_text(__import__("json").dumps(sweep))
    assert study.norcal_metrics(str(run), [0.5, 1.0]) == {0.5: bbox, 1.0: {"AP": 24.0}}
    assert study.norcal_metrics(str(run), [0.5, 2.0]) is None  # a γ not swept: run the sweep again


class FakeTrainNet:
    """Stands in for the train_net.py subprocesses of ``study.train`` (the study's bookkeeping is under test, the
    trainings themselves are tested in tests/test_evaluation.py::test_long_tail_study_smoke): writes the files a
    finished run leaves (final evaluation in metrics.json, grad_stats.json, model_final.pth, NorCal sweep), with
    metrics that depend on (method, seed)."""

    def __init__(self, study):
        self.study, self.calls = study, []

    @staticmethod
    def ap(method, seed):
        return 10.0 + len(method) + seed / 4

    def __call__(self, job):
        name, seed, run_dir, cmd, _ = job
        self.calls.append((name, seed))
        os.makedirs(run_dir, exist_ok=True)
        metrics = {f"bbox/{k}": self.ap(name.split()[0], seed) for k in self.study.METRICS}
        if "--eval-only" in cmd:  # NorCal sweep
            sweep = {"results": {"norcal_gamma=1": {"bbox": {k[5:]: v + 1 for k, v in metrics.items()}}}}
            with open(os.path.join(run_dir, "norcal_sweep.json"), "w") as f:
                json.dump(sweep, f)
            return name, seed, 0
        max_iter = int(cmd[cmd.index("SOLVER.MAX_ITER") + 1])
        with open(os.path.join(run_dir, "metrics.json"), "w") as f:
            f.write(json.dumps({"iteration": max_iter - 1, **metrics}) + "\n")
        stats = {"loss": "bce", "pos": [1.0, 2.0, 3.0], "neg": [10.0, 4.0, 3.0]}
        write_grad_stats(run_dir, {"groups": [0, 1, 2], "group_names": ["rare", "common", "frequent"],
                                   "class_names": ["a", "b", "c"], "image_count": [1, 5, 20],
                                   "stats": {"roi_heads": stats}})
        open(os.path.join(run_dir, "model_final.pth"), "w").close()
        return name, seed, 0


def test_records_resume_the_study_in_a_fresh_output_directory(study, tmp_path, monkeypatch, capsys):
    fake = FakeTrainNet(study)
    monkeypatch.setattr(study, "train", fake)
    monkeypatch.setattr(study, "ensure_dataset", lambda profile: 40)
    monkeypatch.setattr(study, "dataset_digest", lambda root: {"train.json": "abc"})
    records = tmp_path / "records"

    def session(out, *extra):
        fake.calls.clear()
        argv = ["--methods", "faster_rcnn_softmax", "faster_rcnn_sigmoid", "faster_rcnn_acsl", "--seeds", "0", "1",
                "--max-iter", "4", "--out", str(tmp_path / out), "--records", str(records), *extra]
        assert study.main(argv) == 0
        with open(tmp_path / out / "results.json") as f:
            return json.load(f)["methods"], list(fake.calls), capsys.readouterr().out

    first, calls, _ = session("out1")
    assert len(calls) == 6 + 2  # every run, then the NorCal sweeps of softmax
    assert calls.index(("faster_rcnn_acsl", 0)) > calls.index(("faster_rcnn_softmax", 0))
    record = json.loads((records / "faster_rcnn_acsl" / "seed1.json").read_text())
    assert record["metrics"]["AP"] == fake.ap("faster_rcnn_acsl", 1) and record["commit"] == study.git_commit()
    assert "SEED" in record["opts"] and "OUTPUT_DIR" not in record["opts"] and "MODEL.WEIGHTS" not in record["opts"]
    assert record["dataset"] == {"train.json": "abc"} and record["machine"]["cores"] == os.cpu_count()
    assert record["grad_ratio"] == pytest.approx({"rare": 0.1, "common": 0.5, "frequent": 1.0})
    assert (records / "faster_rcnn_acsl" / "seed1.grad_stats.json").is_file()
    assert json.loads((records / "faster_rcnn_softmax" / "seed0.json").read_text())["norcal"]["1"]["AP"] == \
        fake.ap("faster_rcnn_softmax", 0) + 1

    # a later session, no output directory: nothing to train, the same study
    second, calls, printed = session("out2")
    assert calls == [] and "skip (recorded" in printed
    assert first["faster_rcnn_acsl"]["paired"]["baseline"] == "faster_rcnn_softmax"
    for method in first:
        assert second[method]["runs"] == first[method]["runs"]
        assert second[method].get("paired") == first[method].get("paired")
    assert second["faster_rcnn_softmax+norcal1"]["runs"]["1"]["AP"] == fake.ap("faster_rcnn_softmax", 1) + 1
    assert second["faster_rcnn_sigmoid"]["sources"]["1"].endswith(os.path.join("faster_rcnn_sigmoid", "seed1.json"))
    assert "records of earlier sessions" in (tmp_path / "out2" / "results.md").read_text()
    assert (tmp_path / "out2" / "grad_ratio_two_stage.png").is_file()  # drawn from the records' statistics

    # a second stage missing: --summarize keeps the first stage's record; a study trains the first stage again
    # (a record only) for its model, the rest is kept
    (records / "faster_rcnn_acsl" / "seed1.json").unlink()
    summary, calls, _ = session("out3", "--summarize")
    assert calls == [] and summary["faster_rcnn_softmax"]["runs"] == first["faster_rcnn_softmax"]["runs"]
    assert "1" not in summary["faster_rcnn_acsl"]["runs"]
    third, calls, _ = session("out3")
    assert calls == [("faster_rcnn_softmax", 1), ("faster_rcnn_acsl", 1), ("faster_rcnn_softmax NorCal", 1)]
    assert third["faster_rcnn_acsl"]["runs"] == first["faster_rcnn_acsl"]["runs"]

    # records of another schedule, or of other data, are not these runs, and are not overwritten by them
    before = {p: p.read_text() for p in records.rglob("*.json")}
    fourth, calls, printed = session("out4", "--max-iter", "6")
    assert len(calls) == 6 + 2 and "trained with other overrides" in printed and "no record written" in printed
    assert {p: p.read_text() for p in records.rglob("*.json")} == before
    monkeypatch.setattr(study, "dataset_digest", lambda root: {"train.json": "other"})
    fifth, calls, printed = session("out5", "--summarize")
    assert calls == [] and "trained with other data" in printed and fifth["faster_rcnn_softmax"]["runs"] == {}


def test_same_metrics_treats_nan_as_equal(study):
    nan = float("nan")
    assert study.same_metrics({"AP": 1.0, "APr": nan}, {"AP": 1.0, "APr": nan})
    assert not study.same_metrics({"AP": 1.0, "APr": nan}, {"AP": 1.0, "APr": 0.0})
    assert not study.same_metrics({"AP": 1.0}, {"AP": 1.0, "APr": 0.0})


def test_config_digest_follows_the_base_chain(study):
    digest = study.config_digest("faster_rcnn_acsl")
    assert list(digest) == [os.path.join("configs", "synthetic", "faster_rcnn_acsl.yaml"),
                            os.path.join("configs", "Base-Synthetic-RCNN-FPN.yaml")]


def test_rebase_moves_records_only_to_data_that_trains_and_scores_the_same(study, tmp_path):
    old = str(tmp_path / "old")
    generate(old, num_train=300, num_val=60, image_size=32, num_frequent=2, num_common=3, num_rare=4, progress=False)
    new = str(tmp_path / "new")
    shutil.copytree(old, new)

    def edit(root, change):
        path = os.path.join(root, "train.json")
        with open(path) as f:
            data = json.load(f)
        change(data)
        with open(path, "w") as f:
            json.dump(data, f)

    edit(new, lambda d: (d["annotations"][0].update(area=d["annotations"][0]["area"] + 0.01),
                         d["info"]["generator"].update(version=99)))
    total = sum(len(json.load(open(os.path.join(old, f"{s}.json")))["annotations"]) for s in ("train", "val"))
    changed, counted, largest = study.data_difference(old, new)
    assert (changed, counted) == (1, total) and largest == pytest.approx(0.01)
    for breaks, what in ((lambda d: d["annotations"][1]["bbox"].__setitem__(0, 0.5), "annotation"),
                         (lambda d: d["images"][0].update(neg_category_ids=[]), "images"),
                         (lambda d: d["info"]["generator"].update(seed=5), "generator")):
        other = str(tmp_path / f"other_{what}")
        shutil.copytree(new, other)
        edit(other, breaks)
        with pytest.raises(ValueError, match=what):
            study.data_difference(old, other)
    image = json.load(open(os.path.join(new, "val.json")))["images"][0]["coco_url"]
    with open(os.path.join(new, image), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="differs"):
        study.data_difference(old, new)

    records = tmp_path / "records"
    for method, dataset in (("faster_rcnn_eql", study.dataset_digest(old)), ("faster_rcnn_eqlv2", {"train.json": "x"})):
        (records / method).mkdir(parents=True)
        (records / method / "seed0.json").write_text(json.dumps({"format": study.RECORD_FORMAT, "dataset": dataset}))
        (records / method / "seed0.grad_stats.json").write_text("{}")
    paths = study.rebase_records(str(records), study.dataset_digest(old), {"train.json": "new"}, "why")
    assert paths == [str(records / "faster_rcnn_eql" / "seed0.json")]
    moved = json.loads((records / "faster_rcnn_eql" / "seed0.json").read_text())
    assert moved["dataset"] == {"train.json": "new"}
    assert moved["data_rebased"][0]["from"] == study.dataset_digest(old) and moved["data_rebased"][0]["why"] == "why"
    assert json.loads((records / "faster_rcnn_eqlv2" / "seed0.json").read_text())["dataset"] == {"train.json": "x"}


def test_a_rewritten_record_keeps_its_history(study, tmp_path):
    identity = {"opts": ["SEED", "0"], "configs": {}, "dataset": {"train.json": "new"}}
    metrics = {"AP": 20.0, "APr": 1.0}
    history = {"note": "n", "replaces": {"metrics": {"AP": 19.0}}, "commit": "abc", "machine": None,
               "data_rebased": [{"from": {"train.json": "old"}, "why": "areas", "written": "2026-12-03"}]}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = str(tmp_path / "records")
    path = study.write_record(records, "faster_rcnn_eql", 0, str(run_dir), identity, metrics,
                              previous={"metrics": dict(metrics), **history})
    same = json.loads(open(path).read())
    assert {k: same[k] for k in history} == history  # the same run: its commit, notes and data history stay
    path = study.write_record(records, "faster_rcnn_eql", 0, str(run_dir), identity, {"AP": 21.0},
                              previous={"metrics": dict(metrics), **history})
    again = json.loads(open(path).read())  # trained again: the earlier run, its data history included, is kept
    assert "data_rebased" not in again and again["replaces"]["data_rebased"] == history["data_rebased"]
    assert again["replaces"]["metrics"] == metrics and again["metrics"] == {"AP": 21.0}
