"""The built-in benchmark family (v2 and the members of hegl_cli.data.benchmark.family): every class
needs spatial evidence; every cue is a shortcut in train/val (independent of the labels when
cue-free), independent in test, and toggled all at once in the counterfactual twin."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from hegl_cli.data.benchmark.family import MEMBERS
from hegl_cli.data.benchmark.generator import (
    ALL_CUES,
    CUE_NAMES,
    GLOBAL_CUE_CLASS,
    MARKER_CLASSES,
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    generate_case,
    marker_zones,
    render_cues,
)
from hegl_cli.evaluation.image_statistics import global_statistics, position_free_auc

GLOBAL_KINDS = ("scanner", "contrast", "inmask")  # cues a position-free statistic can see


def _cases(spec: SyntheticSpec, split: str, n: int) -> list[dict]:
    return [generate_case((spec, split, i)) for i in range(n)]


def _features_and_labels(cases: list[dict], classes=SYNTHETIC_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([global_statistics(c["image"]) for c in cases])
    y = np.array([[name in c["record"]["syms"] for name in classes] for c in cases], dtype=int)
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("member", list(MEMBERS))
def test_global_image_statistics_do_not_solve_any_class_on_test(member):
    """A logistic regression on position-free statistics, trained on train, stays at or below 0.60
    test AUC for every ever-positive class of every member; the same features find a global cue
    within train (so they can see)."""
    spec = SyntheticSpec(size=128, member=member)
    classes = spec.benchmark.positive
    x_train, y_train = _features_and_labels(_cases(spec, "train", 700), classes)
    x_test, y_test = _features_and_labels(_cases(spec, "test", 400), classes)
    fit, held = slice(0, 500), slice(500, 700)  # held: train-distributed images the model did not see
    test_aucs = position_free_auc(x_train[fit], y_train[fit], x_test, y_test)
    assert all(auc <= 0.60 for auc in test_aucs), dict(zip(classes, test_aucs))
    held_aucs = dict(zip(classes, position_free_auc(x_train[fit], y_train[fit], x_train[held], y_train[held])))
    for name in spec.benchmark.cues:
        kind, cls = name.split(":")
        if kind in GLOBAL_KINDS:  # a global statistic: found where it holds
            assert held_aucs[cls] > 0.70, (name, held_aucs)


def test_position_free_audit_finds_a_global_cue():
    """The audit is not blind: a class that brightens the whole image is found (AUC near 1)."""
    rng = np.random.default_rng(0)
    labels = rng.random((200, 2)) < 0.5
    images = rng.uniform(0.2, 0.6, (200, 32, 32)) + 0.15 * labels[:, :1, None]  # class 0: brighter image
    features = np.stack([global_statistics(np.clip(im, 0, 1)) for im in images])
    aucs = position_free_auc(features[:120], labels[:120].astype(int), features[120:], labels[120:].astype(int))
    assert aucs[0] > 0.95 and abs(aucs[1] - 0.5) < 0.2


def test_v2_keeps_its_cues():
    partners = list(MARKER_CLASSES) + [GLOBAL_CUE_CLASS]
    assert [n.split(":")[1] for n in CUE_NAMES] == partners and len(CUE_NAMES) == 5


@pytest.mark.parametrize("member", list(MEMBERS))
@pytest.mark.parametrize("cue_free", [False, True])
def test_every_cue_follows_its_class_in_train_and_nothing_in_test(member, cue_free):
    spec = SyntheticSpec(size=64, member=member, cue_free=cue_free, n_train=300)
    names = spec.benchmark.cues
    for split in ("train", "test"):
        cases = _cases(spec, split, 300)
        for bit, name in enumerate(names):
            cls = name.split(":")[1]
            cue = np.array([c["cue"] >> bit & 1 for c in cases], bool)
            positive = np.array([cls in c["record"]["syms"] for c in cases])
            assert 20 <= positive.sum() <= 280, name
            if split == "train" and not cue_free:
                assert cue[positive].mean() > 0.8 and cue[~positive].mean() < 0.2, name
            else:
                assert abs(cue[positive].mean() - cue[~positive].mean()) < 0.2, (split, name)
                assert 0.35 < cue.mean() < 0.65


@pytest.mark.parametrize("member", list(MEMBERS))
def test_never_positive_classes_are_never_drawn_and_positives_are_in_a_lung(member):
    spec = SyntheticSpec(size=128, member=member)
    seen = set()
    for case in _cases(spec, "train", 40):
        record = case["record"]
        assert set(record["syms"]) <= set(spec.benchmark.positive)
        assert record["syms"] == sorted(record["syms"], key=spec.benchmark.classes.index)
        seen |= set(record["syms"])
        for polygon in record["polygons"]:
            pts = np.asarray(polygon)
            assert 0.15 < pts[:, 0].mean() / 128 < 0.85 and 0.15 < pts[:, 1].mean() / 128 < 0.8
    assert seen == set(spec.benchmark.positive)


def test_the_config_names_every_member():
    import typing

    from hegl_cli.config import DataConfig

    assert set(typing.get_args(typing.get_type_hints(DataConfig)["benchmark"])) == set(MEMBERS)


def test_twin_toggles_every_cue_and_nothing_else(monkeypatch):
    """The image and its twin render the same clean pixels, with the cue bits and their complement."""
    import hegl_cli.data.benchmark.generator as synthetic

    calls = []
    real = synthetic.render_cues
    monkeypatch.setattr(synthetic, "render_cues",
                        lambda img, cues, seed, **kw: calls.append((img, cues, seed, kw)) or real(img, cues, seed, **kw))
    for member in MEMBERS.values():
        for i in range(4):
            calls.clear()
            case = synthetic.generate_case((SyntheticSpec(size=64, member=member.name), "test", i))
            (img_a, bits_a, seed_a, kw_a), (img_b, bits_b, seed_b, kw_b) = calls
            assert img_a is img_b and seed_a == seed_b and kw_a == kw_b
            assert bits_a == case["cue"] and bits_b == case["cue"] ^ member.all_cues
            assert not np.array_equal(case["image"], case["twin"])
    assert MEMBERS["v2"].all_cues == ALL_CUES
    # Markers only touch their corners; the scanner cue changes the whole image.
    zones = marker_zones(128)
    image = np.random.default_rng(0).uniform(0.1, 0.8, (128, 128)).astype(np.float32)
    for bit in range(len(MARKER_CLASSES)):
        diff = render_cues(image, 1 << bit, 7) != render_cues(image, 0, 7)
        assert diff.any() and not diff[~zones].any(), CUE_NAMES[bit]
    scanned = render_cues(image, 1 << len(MARKER_CLASSES), 7) != render_cues(image, 0, 7)
    assert scanned.mean() > 0.95


def test_annotations_mark_the_lesions_and_only_them():
    """Each positive class has one polygon, in the chest; negatives (drawn as decoys in the air) have none."""
    spec = SyntheticSpec(size=128)
    for case in _cases(spec, "train", 30):
        record = case["record"]
        assert len(record["syms"]) == len(record["polygons"]) == len(record["boxes"])
        for polygon in record["polygons"]:
            pts = np.asarray(polygon)
            assert 0.15 < pts[:, 0].mean() / 128 < 0.85 and 0.15 < pts[:, 1].mean() / 128 < 0.8


@pytest.mark.parametrize("member", [m for m in MEMBERS if m != "v2"])
def test_each_cue_of_a_member_changes_only_where_it_lives(member):
    """Markers and tags change only their zones; a device line is thin and reaches its target; the
    lung grid stays in the lungs; a contrast cue changes (nearly) every pixel."""
    import hegl_cli.data.benchmark.generator as synthetic
    from hegl_cli.data.benchmark.generator import cue_zones

    m = MEMBERS[member]
    size = 128
    image = np.random.default_rng(0).uniform(0.1, 0.8, (size, size)).astype(np.float32)
    lungs = np.zeros((size, size), np.float32)
    lungs[30:90, 20:50] = 1
    target = (35.0, 60.0)
    scene = {"lung_mask": lungs, "targets": [target] * 4}
    for bit, name in enumerate(m.cues):
        kind = name.split(":")[0]
        diff = synthetic.render_cues(image, 1 << bit, 7, member=m, scene=scene) != synthetic.render_cues(
            image, 0, 7, member=m, scene=scene)
        assert diff.any(), name
        if kind in ("marker", "tag"):
            assert not diff[~cue_zones(m, size)].any(), name
        elif kind == "inmask":
            assert not diff[lungs == 0].any() and diff[lungs == 1].mean() > 0.9, name
        elif kind == "device":
            assert diff.mean() < 0.03 and diff[int(target[1]) - 2: int(target[1]) + 3,
                                                int(target[0]) - 2: int(target[0]) + 3].any(), name
        else:
            assert diff.mean() > 0.95, name


def test_the_shipped_lesion_outlines_are_chestxdets():
    """The bank shipped in assets/ is what build_shape_bank makes of the official annotation files."""
    from hegl_cli.data.benchmark.shapes import build_shape_bank, shape_bank

    train = shared_data("chestxdet", "ChestX_Det_train.json")
    rebuilt = build_shape_bank([train])
    shipped = shape_bank()
    assert set(rebuilt) == set(shipped)
    for label, polygons in rebuilt.items():
        assert np.allclose(np.asarray(polygons), shipped[label], atol=1e-4), label
