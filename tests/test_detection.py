"""Detection: synthetic scenes, the YOLO-style detector's decode + NMS, and mAP / precision /
recall against hand-computed cases and hypothesis properties (pycocotools does the mAP)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_pqbench.datasets import Split, get_dataset
from pytest_pqbench.datasets.scenes import CLASS_NAMES, scenes_dataset
from pytest_pqbench.metrics.detection import (
    coco_map,
    evaluate_detections,
    precision_recall,
    score_detections,
)
from pytest_pqbench.models import ModelSpec, get_spec
from pytest_pqbench.models.detector import (
    ANCHORS,
    STRIDES,
    SceneDetector,
    build_targets,
    decode_boxes,
    detector_head,
    nms,
    postprocess,
)
from pytest_pqbench.pruners import PRUNERS, PruneContext, prune
from pytest_pqbench.workflows import BuildContext, get_workflow

SHAPE = (64, 64)


def det(x1, y1, x2, y2, score=0.9, cls=0):
    return [x1, y1, x2, y2, score, cls]


def arr(rows, width):
    return np.asarray(rows, dtype=np.float32).reshape(-1, width)


@pytest.fixture(scope="module")
def small_scenes():
    return scenes_dataset(seed=3, train=16, evaluation=24, calibration=8)


# ---- the dataset ------------------------------------------------------------------------------
def test_scenes_are_deterministic_disjoint_and_boxes_valid(small_scenes):
    again = scenes_dataset(seed=3, train=16, evaluation=24, calibration=8)
    assert np.array_equal(small_scenes.evaluation.images, again.evaluation.images)
    assert small_scenes.task == "detect" and small_scenes.class_names == CLASS_NAMES
    splits = [small_scenes.train, small_scenes.evaluation, small_scenes.calibration]
    flat = [s.images.reshape(len(s), -1) for s in splits]
    for i in range(3):
        for j in range(i + 1, 3):  # no image appears in two splits
            assert not (np.abs(flat[i][:, None] - flat[j][None]).max(-1) < 1e-6).any()
    labels = np.concatenate(small_scenes.evaluation.labels)
    assert labels.dtype == np.float32 and labels.shape[1] == 5
    assert set(np.unique(labels[:, 0])) <= set(range(len(CLASS_NAMES)))
    assert (labels[:, 3] > labels[:, 1]).all() and (labels[:, 4] > labels[:, 2]).all()
    assert labels[:, 1:].min() >= 0 and labels[:, 1:].max() <= 64
    assert scenes_dataset(seed=4, train=16, evaluation=24, calibration=8).fingerprint \
        != small_scenes.fingerprint


# ---- metrics: hand-computed -------------------------------------------------------------------
def test_perfect_predictions_score_one():
    gt = [arr([[0, 5, 5, 25, 20], [1, 30, 30, 60, 50]], 5), arr([[1, 2, 2, 12, 30]], 5)]
    dets = [arr([det(5, 5, 25, 20, 0.9, 0), det(30, 30, 60, 50, 0.8, 1)], 6),
            arr([det(2, 2, 12, 30, 0.7, 1)], 6)]
    scores = score_detections(dets, gt, 2, SHAPE)
    assert scores["map50"] == pytest.approx(1.0) and scores["map50_95"] == pytest.approx(1.0)
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0


def test_iou_exactly_half_counts_at_50_only():
    # prediction covers half the box: IoU 0.5 -> matched at 0.50, missed at 0.55..0.95
    gt = [arr([[0, 0, 0, 10, 10]], 5)]
    dets = [arr([det(0, 0, 10, 5)], 6)]
    map50, map50_95 = coco_map(dets, gt, 1, SHAPE)
    assert map50 == pytest.approx(1.0)
    assert map50_95 == pytest.approx(0.1)  # 1 of 10 IoU thresholds


def test_half_recall_uses_101_point_interpolation():
    # 2 boxes, 1 found: precision 1 on recall 0..0.5 -> 51 of the 101 recall points
    gt = [arr([[0, 0, 0, 10, 10], [0, 30, 30, 40, 40]], 5)]
    dets = [arr([det(0, 0, 10, 10)], 6)]
    assert coco_map(dets, gt, 1, SHAPE)[0] == pytest.approx(51 / 101)
    assert precision_recall(dets, gt) == (1.0, 0.5)


def test_false_positive_ranked_first_halves_ap():
    # PR curve: (r=0, p=0) then (r=1, p=0.5): interpolated precision 0.5 everywhere
    gt = [arr([[0, 0, 0, 10, 10]], 5)]
    dets = [arr([det(40, 40, 50, 50, 0.9), det(0, 0, 10, 10, 0.8)], 6)]
    assert coco_map(dets, gt, 1, SHAPE)[0] == pytest.approx(0.5)
    assert precision_recall(dets, gt) == (0.5, 1.0)


def test_wrong_class_and_low_confidence():
    gt = [arr([[0, 0, 0, 10, 10]], 5)]
    assert coco_map([arr([det(0, 0, 10, 10, 0.9, 1)], 6)], gt, 2, SHAPE) == (0.0, 0.0)
    low = [arr([det(0, 0, 10, 10, 0.1)], 6)]
    assert coco_map(low, gt, 1, SHAPE)[0] == pytest.approx(1.0)  # mAP ranks, ignores threshold
    assert precision_recall(low, gt, confidence=0.25) == (0.0, 0.0)
    assert coco_map([arr([], 6)], gt, 1, SHAPE) == (0.0, 0.0)


def test_no_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="no"):
        coco_map([arr([det(0, 0, 10, 10)], 6)], [arr([], 5)], 1, SHAPE)


# ---- metrics: properties ----------------------------------------------------------------------
@st.composite
def scenes_gt(draw):
    images = []
    for _ in range(draw(st.integers(1, 3))):
        boxes = []
        for _ in range(draw(st.integers(1, 3))):
            x, y = draw(st.integers(0, 40)), draw(st.integers(0, 40))
            w, h = draw(st.integers(6, 23)), draw(st.integers(6, 23))
            boxes.append([draw(st.integers(0, 2)), x, y, x + w, y + h])
        images.append(arr(boxes, 5))
    return images


def perfect(gt, scores):
    out, k = [], 0
    for boxes in gt:
        rows = []
        for b in boxes:
            rows.append([*b[1:], scores[k], b[0]])
            k += 1
        out.append(arr(rows, 6))
    return out


def distinct_scores(n):
    return st.lists(st.floats(0.3, 1.0), min_size=n, max_size=n, unique=True)


@settings(max_examples=25, deadline=None)
@given(gt=scenes_gt(), data=st.data())
def test_property_perfect_is_one_and_order_invariant(gt, data):
    n = sum(len(g) for g in gt)
    scores = data.draw(distinct_scores(n))
    dets = perfect(gt, scores)
    assert coco_map(dets, gt, 3, SHAPE) == pytest.approx((1.0, 1.0))
    # shuffle the boxes inside each image, and the images themselves (labels with them)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    wrong = [d.copy() for d in dets]
    for d in wrong:
        d[:, :2] += 7.0  # shifted: some thresholds fail, so the score is not trivially 1
    order = rng.permutation(len(gt))
    shuffled = [rng.permutation(wrong[i]) for i in order]
    assert score_detections(shuffled, [gt[i] for i in order], 3, SHAPE) \
        == pytest.approx(score_detections(wrong, gt, 3, SHAPE))


@settings(max_examples=20, deadline=None)
@given(gt=scenes_gt(), shifts=st.lists(st.floats(0.0, 12.0), min_size=2, max_size=2),
       data=st.data())
def test_property_larger_shift_never_scores_higher(gt, shifts, data):
    scores = data.draw(distinct_scores(sum(len(g) for g in gt)))
    small, large = sorted(shifts)

    def shifted(by):
        out = [d.copy() for d in perfect(gt, scores)]
        for d in out:
            d[:, [0, 2]] += by  # lower IoU with the ground truth as the shift grows
        return out

    near = coco_map(shifted(small), gt, 3, SHAPE)
    far = coco_map(shifted(large), gt, 3, SHAPE)
    assert far[0] <= near[0] + 1e-9 and far[1] <= near[1] + 1e-9


# ---- decode + NMS -----------------------------------------------------------------------------
def test_nms_keeps_best_of_overlapping_and_distant_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 4.0], [30, 30, 40, 40]],
                     dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.5], dtype=np.float32)
    # box 0 overlaps box 1 at IoU 0.68 (suppressed); box 2 overlaps box 1 at IoU < 0.5 (kept)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def encode(labels, num_classes):
    """Raw head outputs that decode exactly to ``labels`` (the inverse of decode_boxes)."""
    positive, boxes, classes = build_targets(labels, *SHAPE, num_classes)
    cells, rows = [], []
    for stride, anchor in zip(STRIDES, ANCHORS, strict=True):
        g = SHAPE[0] // stride
        gy, gx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel()], 1))
        rows.append(np.full((g * g, 2), [stride, anchor]))
    cells, (strides, anchors) = np.concatenate(cells), np.concatenate(rows).T
    raw = np.full((len(labels), len(cells), 5 + num_classes), -12.0, dtype=np.float32)
    b = boxes.numpy()
    centre = (b[..., :2] + b[..., 2:]) / 2
    size = b[..., 2:] - b[..., :2]
    raw[..., :2] = _logit((centre / strides[:, None] - cells + 0.5) / 2)
    raw[..., 2:4] = _logit(np.sqrt(np.maximum(size, 1e-3) / anchors[:, None]) / 2)
    pos = positive.numpy()
    raw[..., 4] = np.where(pos, 12.0, -12.0)
    raw[..., 5:] = np.where(classes.numpy() > 0, 12.0, -12.0)
    return raw


def test_decode_nms_round_trip_scores_one(small_scenes):
    labels = small_scenes.evaluation.labels
    positive, boxes, _ = (t.numpy() for t in build_targets(labels, *SHAPE, len(CLASS_NAMES)))
    # one prediction per cell and scale: two centres in one cell keep only one box; score the
    # images where every box owns its cell
    owned = [i for i, g in enumerate(labels)
             if len(np.unique(boxes[i][positive[i]], axis=0)) == len(g)]
    assert len(owned) >= 0.8 * len(labels)
    data = dataclasses.replace(small_scenes, evaluation=Split(
        small_scenes.evaluation.images[owned], [labels[i] for i in owned]))
    raw = encode(data.evaluation.labels, len(CLASS_NAMES))
    decoded = decode_boxes(torch.from_numpy(raw), *SHAPE).numpy()
    assert np.abs(decoded[positive[owned]] - boxes[owned][positive[owned]]).max() < 1e-2
    detections = postprocess(raw, SHAPE)
    # three cells predict each box; NMS leaves one detection per object
    assert [len(d) for d in detections] == [len(g) for g in data.evaluation.labels]
    scores = evaluate_detections(raw, data, get_spec("scenes_yolo"))
    assert scores["map50"] == pytest.approx(1.0) and scores["map50_95"] > 0.95
    assert scores["accuracy"] == scores["map50"] and scores["accuracy_metric"] == "map50"
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0


def test_postprocess_rejects_a_mismatched_output():
    with pytest.raises(ValueError, match="rows"):
        postprocess(np.zeros((1, 7, 9), dtype=np.float32), SHAPE)


def test_detector_without_postprocess_is_named(small_scenes):
    spec = ModelSpec(name="bare_det", task="detect", input_shape=(3, 64, 64),
                     builder=SceneDetector, default_dataset="scenes")
    with pytest.raises(ValueError, match="bare_det"):
        evaluate_detections(np.zeros((24, 80, 9), dtype=np.float32), small_scenes, spec)


# ---- pruners and workflows on the detector (untrained and small: shapes and parity only) -------
@pytest.fixture(scope="module")
def tiny_detector():
    torch.manual_seed(0)
    model = SceneDetector(4, (8, 16, 16, 24, 32))
    with torch.no_grad():  # non-trivial BN statistics, so BN-scale ranking has something to rank
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("pruner", ["none", "group", "layer", "soft", "taylor"])
def test_every_pruner_keeps_the_detector_head(tiny_detector, small_scenes, pruner):
    if pruner not in PRUNERS:
        pytest.skip(f"pruner {pruner!r} is not registered in this checkout")
    calib = small_scenes.calibration
    ctx = PruneContext(ratio=0.3, example_inputs=torch.from_numpy(small_scenes.batch(2)),
                       ignored_layers=detector_head(tiny_detector), task="detect",
                       calibration=[(calib.images[:4], calib.labels[:4])])
    pruned, report = prune(tiny_detector, pruner, ctx)
    x = torch.from_numpy(small_scenes.batch(3))
    with torch.no_grad():
        assert pruned(x).shape == tiny_detector(x).shape == (3, 80, 9)
    assert pruned.head8.out_channels == pruned.head16.out_channels == 9
    if pruner in ("group", "layer", "taylor"):
        assert report.params < report.params_before
    if pruner == "soft":
        assert report.zero_fraction > 0.1


def test_detector_runs_in_ort_int8_with_parity(tiny_detector, small_scenes, tmp_path):
    pruned, _ = prune(tiny_detector, "group", PruneContext(
        ratio=0.2, example_inputs=torch.from_numpy(small_scenes.batch(2)),
        ignored_layers=detector_head(tiny_detector), task="detect"))
    calib = list(small_scenes.calibration_batches(4))
    from pytest_pqbench.cache import ArtefactCache

    ctx = BuildContext(cache=ArtefactCache(tmp_path), model_key="det", threads=1)
    engine = get_workflow("ort").build(pruned, "int8", calib, small_scenes.batch(4), ctx)
    batch = small_scenes.batch(8)
    with torch.no_grad():
        want = pruned(torch.from_numpy(batch)).numpy()
    got = np.asarray(engine(batch))
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < 0.3
    assert engine.facts["precision_engaged"] > 0.5


def test_scenes_is_registered_for_the_detector():
    assert get_spec("scenes_yolo").default_dataset == "scenes"
    data = get_dataset("scenes", seed=0, train=8, evaluation=8, calibration=8)
    assert data.input_shape == get_spec("scenes_yolo").input_shape
