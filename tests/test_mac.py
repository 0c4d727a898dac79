"""The MAC model, its checkpoints and the inference engine (torch only, no FiftyOne)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from faceaudit.attributes import ATTRIBUTES
from faceaudit.inference import Engine, resolve_device
from faceaudit.model import MAC, MACConfig, CheckpointError, load_checkpoint, save_checkpoint
from faceaudit.model.checkpoint import load_backbone_weights
from faceaudit.model.iresnet import build_backbone

TINY = dict(backbone="tiny", embedding_size=64, hidden=(64,), branch_hidden=16)


def tiny_mac(**kw) -> MAC:
    torch.manual_seed(0)
    return MAC(MACConfig(**{**TINY, **kw})).eval()


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    model = tiny_mac(threshold=0.55, mc_passes=7)
    path = tmp_path / "mac.pt"
    save_checkpoint(model, str(path))
    loaded = load_checkpoint(str(path), attributes=ATTRIBUTES)
    assert loaded.cfg.threshold == 0.55 and loaded.cfg.mc_passes == 7 and loaded.cfg.backbone == "tiny"
    x = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    for a, b in zip(model.predict(x), loaded.predict(x)):
        assert torch.equal(a, b)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "faceaudit-mac", "config": {}, "state_dict": {}, "x": Evil()}, str(path))
    with pytest.raises(CheckpointError, match=f"{path}: not a loadable torch checkpoint") as err:
        load_checkpoint(str(path))
    # issue 8.5: the refusal says why, and does not suggest loading the file unsafely
    assert "could run code" in str(err.value)
    assert "weights_only=False" not in str(err.value) and "trust" not in str(err.value)


@pytest.mark.parametrize("problem, match", [
    ("missing", "no such checkpoint file"),
    ("garbage", "not a loadable torch checkpoint"),
    ("not-mac", "not a faceaudit MAC checkpoint"),
    ("attributes", r"attributes do not match \(missing Attractive; extra Blurry\)"),
    ("shapes", "shape mismatch: head.branch_w1"),
])
def test_bad_checkpoints_say_what_is_wrong(tmp_path, problem, match):
    path = tmp_path / "ckpt.pt"
    if problem == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    elif problem == "not-mac":
        torch.save(build_backbone("tiny", 64).state_dict(), str(path))
    elif problem == "attributes":
        save_checkpoint(tiny_mac(attributes=(*ATTRIBUTES[:-1], "Blurry")), str(path))
    elif problem == "shapes":
        payload = {"format": "faceaudit-mac", "version": 1, "config": tiny_mac().cfg.to_dict(),
                   "state_dict": tiny_mac(branch_hidden=8).state_dict()}
        torch.save(payload, str(path))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(path), attributes=ATTRIBUTES)


def test_iresnet50_takes_an_insightface_style_state_dict(tmp_path):
    """The parameter names and shapes of arcface_torch's IResNet-50 (as in its backbone.pth)."""
    reference = build_backbone("iresnet50")
    state = reference.state_dict()
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["layer3.13.conv2.weight"].shape == (256, 256, 3, 3)
    assert "layer1.0.downsample.1.running_var" in state and "features.weight" in state
    assert sum(p.numel() for p in reference.parameters()) == pytest.approx(43.6e6, rel=0.01)
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items() if "num_batches" not in k}, str(path))
    model = MAC(MACConfig())
    load_backbone_weights(model.backbone, str(path))
    assert torch.equal(model.backbone.fc.weight, reference.fc.weight)


def test_mc_reliability_is_deterministic_and_batch_independent():
    model = tiny_mac()
    x = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8)
    states, signed = model.predict(x, passes=12)
    assert states.dtype == torch.int8 and set(states.unique().tolist()) <= {-1, 0, 1}
    assert (signed.abs() <= 1).all()
    undefined = states == 0
    assert torch.equal(undefined, signed.abs() < model.cfg.threshold)
    s2, g2 = model.predict(x[3:], passes=12)  # another batch composition, the same labels
    assert torch.equal(s2, states[3:]) and torch.allclose(g2, signed[3:], atol=1e-5)


def test_head_masks_really_vary_between_passes():
    model = tiny_mac(dropout=0.5)
    emb = torch.randn(2, 64)
    logits = model.head.mc_forward(emb, passes=5)
    assert logits.shape == (5, 2, 47, 2)
    assert not torch.allclose(logits[0], logits[1])


def _save(path, array, mode=None, **kw):
    Image.fromarray(array, mode=mode).save(path, **kw)
    return str(path)


def test_engine_handles_odd_images_and_reports_bad_ones(tmp_path, faces):
    face = faces.arrays[0]
    gray = np.asarray(Image.fromarray(face).convert("L"))
    paths = [
        _save(tmp_path / "rgb.jpg", face),
        _save(tmp_path / "gray.png", gray),
        _save(tmp_path / "rgba.png", np.dstack([face, np.full(face.shape[:2], 200, np.uint8)])),
        str(tmp_path / "cmyk.jpg"),
        str(tmp_path / "16bit.png"),
        _save(tmp_path / "small.png", face[::7, ::7].copy()),  # 16 x 16: the smallest face taken
        _save(tmp_path / "huge.jpg", np.asarray(Image.fromarray(face).resize((1500, 1500)))),
        str(tmp_path / "broken.jpg"),
        str(tmp_path / "missing.jpg"),
        _save(tmp_path / "tiny.png", face[::14, ::14].copy()),  # 8 x 8: refused, not a face
    ]
    Image.fromarray(face).convert("CMYK").save(paths[3])
    Image.fromarray((gray.astype(np.uint16) * 257)).save(paths[4])
    (tmp_path / "broken.jpg").write_bytes(faces.jpeg(1)[:300])
    engine = Engine(tiny_mac(), device="cpu", batch_size=4, workers=0)
    results = list(engine.run(paths))
    done = np.concatenate([r.indices for r in results])
    failed = dict(f for r in results for f in r.failures)
    assert sorted(done.tolist()) == [0, 1, 2, 3, 4, 5, 6]
    assert set(failed) == {7, 8, 9}
    assert "cannot decode" in failed[7] and "cannot decode" in failed[8]
    assert "too small for a face: 8 x 8 pixels" in failed[9]
    states = np.concatenate([r.states for r in results])
    assert states.shape == (7, 47)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="--device cuda was asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_matches_cpu_labels(tmp_path, faces):
    paths = [str(faces.write(tmp_path / f"{i}.jpg", i)) for i in range(16)]
    model = tiny_mac()
    cpu = list(Engine(model, device="cpu", batch_size=8, workers=0).run(paths))
    gpu = list(Engine(tiny_mac(), device="cuda", batch_size=8, workers=2).run(paths))
    agree = np.mean(np.concatenate([r.states for r in cpu]) == np.concatenate([r.states for r in gpu]))
    assert agree > 0.95  # decoders and bf16 differ slightly; labels barely
