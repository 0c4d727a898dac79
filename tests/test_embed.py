"""Face embeddings on real faces with real models: dlib's shipped weights, an IResNet made here and
its ONNX export; resumable, sharded, delegated; refusals before anything is written."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch

from faceaudit import params
from faceaudit.embedders import (DlibEmbedder, EmbedderError, IResNetEmbedder, OnnxEmbedder, check_onnx,
                                 dlib_model_files, onnx_normalisation)
from faceaudit.model.iresnet import TINY_WIDTHS, IResNet
from faceaudit.progress import drive
from fiftyone_plugin import identity, locks
from fiftyone_plugin.embed import EMBED_URI, FIELD, EmbedError, iter_embed
from fiftyone_plugin.ingest import load_face_dataset

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


def chw(arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A randomly initialised IResNet saved as an InsightFace backbone.pth state dict, its ONNX
    export, and an ONNX file that is no face model (a linear layer on 10 numbers)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = _trained_batchnorm(IResNet((1, 1, 1, 1), TINY_WIDTHS, num_features=64, input_size=112).eval())
    pth = root / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, pth)  # as DataParallel saves it
    onnx_path = root / "r-tiny.onnx"
    torch.onnx.export(net, torch.zeros(2, 3, 112, 112), str(onnx_path), input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    batch_one = root / "r-tiny-batch1.onnx"  # many exports fix the batch size at 1
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(batch_one), input_names=["input"],
                      output_names=["embedding"], dynamo=False)
    half = root / "r-tiny-fp16.onnx"  # float16 in and out
    torch.onnx.export(copy.deepcopy(net).half(), torch.zeros(2, 3, 112, 112, dtype=torch.half), str(half),
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    mxnet = root / "r-tiny-mxnet.onnx"
    _normalising_in_graph(str(onnx_path), str(mxnet))
    not_face = root / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(10, 2).eval(), torch.zeros(1, 10), str(not_face), dynamo=False)
    return {"net": net, "pth": str(pth), "onnx": str(onnx_path), "mxnet": str(mxnet), "batch_one": str(batch_one),
            "half": str(half), "not_face": str(not_face)}


def _trained_batchnorm(net: torch.nn.Module, affine: bool = False) -> torch.nn.Module:
    """``net`` with non-trivial BatchNorm statistics (and, with ``affine``, scales and shifts), as
    a trained network has: a conversion that mixes up BatchNorm layers then shows."""
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            if affine and m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.1, 0.1)
    return net


def _normalising_in_graph(src: str, dst: str) -> None:
    """``src`` with the first nodes a model converted from MXNet has (InsightFace's older zoo):
    ``_minus0`` subtracts 127.5 and ``_mul0`` scales by 1/127.5 inside the graph, so the model
    takes raw 0..255 pixels."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(src)
    graph = model.graph
    inner = graph.input[0].name
    raw = helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 3, 112, 112])
    graph.initializer.extend([helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]),
                              helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 127.5])])
    nodes = [helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
             helper.make_node("Mul", ["centred", "scale"], [inner], name="_mul0"), *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend([raw])
    onnx.checker.check_model(model)
    onnx.save(model, dst)


def reference_dlib(images: np.ndarray) -> np.ndarray:
    """dlib's descriptors computed here with dlib's own calls, normalised."""
    import dlib

    files = dlib_model_files()
    shape, net = dlib.shape_predictor(files["shape5"]), dlib.face_recognition_model_v1(files["resnet"])
    out = []
    for img in images:
        img = np.ascontiguousarray(img)
        box = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        out.append(np.array(net.compute_face_descriptor(dlib.get_face_chip(img, shape(img, box), 150))))
    out = np.array(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_dlib_same_person_scores_higher_than_different_people(faces):
    people = faces.arrays[:8]
    shifted = np.clip(np.roll(people, 3, axis=2).astype(int) + 20, 0, 255).astype(np.uint8)
    e = DlibEmbedder()
    a, b = e.embed(chw(people)), e.embed(chw(shifted))
    assert a.shape == (8, 128) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.allclose(a, reference_dlib(people), atol=1e-5)
    same = (a * b).sum(1)
    sims = a @ a.T
    different = sims[~np.eye(8, dtype=bool)]
    assert same.min() > different.max(), (same, different.max())
    assert e.info() == {"model": "dlib", "checkpoint": None, "dim": 128, "threshold": e.threshold,
                        "preprocessing": e.preprocessing}


def test_dlib_detect_finds_the_astronaut_and_no_face_in_a_flat_image():
    from skimage.data import astronaut

    photo = astronaut()
    flat = np.full_like(photo, 128)
    v = DlibEmbedder(detect=True).embed([torch.from_numpy(photo).permute(2, 0, 1),
                                         torch.from_numpy(flat).permute(2, 0, 1)])
    assert not np.isnan(v[0]).any() and np.isclose(np.linalg.norm(v[0]), 1, atol=1e-5)
    assert np.isnan(v[1]).all()


def test_iresnet_and_its_onnx_export_give_the_same_embeddings(models, faces):
    batch = chw(faces.arrays[:6])
    x = (batch.float() - 127.5) / 127.5
    with torch.no_grad():  # the reference: the network called here, then normalised
        ref = models["net"](x).numpy()
        ref_flip = ref + models["net"](torch.flip(x, dims=[3])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ref_flip /= np.linalg.norm(ref_flip, axis=1, keepdims=True)
    t = IResNetEmbedder(models["pth"])
    assert (t.dim, t.input_size) == (64, 112)
    assert np.allclose(t.embed(batch), ref, atol=1e-5)
    o = OnnxEmbedder(models["onnx"])
    assert (o.dim, o.input_size) == (64, 112) and o.provider == "CPUExecutionProvider"
    assert np.allclose(o.embed(batch), ref, atol=1e-4)
    assert np.allclose(IResNetEmbedder(models["pth"], flip=True).embed(batch), ref_flip, atol=1e-5)
    assert np.allclose(OnnxEmbedder(models["onnx"], flip=True).embed(batch), ref_flip, atol=1e-4)
    # a model converted from MXNet normalises in its graph: it is given raw pixels (InsightFace's
    # rule), not pixels normalised twice
    m = OnnxEmbedder(models["mxnet"])
    assert np.allclose(m.embed(batch), ref, atol=1e-4) and "raw 0..255" in m.preprocessing
    assert np.allclose(OnnxEmbedder(models["batch_one"], flip=True).embed(batch), ref_flip, atol=1e-4)
    half = OnnxEmbedder(models["half"]).embed(batch)  # a float16 model is given float16 pixels
    assert half.dtype == np.float32 and np.all(np.sum(half * ref, axis=1) > 0.999)
    assert onnx_normalisation(models["onnx"]) == (127.5, 127.5)
    assert onnx_normalisation(models["mxnet"]) == (0.0, 1.0)
    # images of another size are resized to the model's input, as the engine does
    assert t.embed([torch.from_numpy(f).permute(2, 0, 1) for f in faces.arrays[:2]]).shape == (2, 64)


def test_onnx_that_is_not_a_face_model_and_missing_checkpoints_are_refused(models, tmp_path):
    with pytest.raises(EmbedderError, match=r"not a face-recognition model: its input .* not an NCHW 3 x H x W"):
        check_onnx(models["not_face"])
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(EmbedderError, match="not a loadable ONNX model"):
        check_onnx(str(tmp_path / "junk.onnx"))
    with pytest.raises(params.ParamError, match="checkpoint: .*missing.pth: no such file"):
        params.embedding_model("iresnet", str(tmp_path / "missing.pth"))
    with pytest.raises(params.ParamError, match="checkpoint: .* is a folder"):
        params.embedding_model("iresnet", str(tmp_path))
    os.mkfifo(tmp_path / "pipe.pth")  # before: "is a folder"; reading a FIFO would block
    for special in (str(tmp_path / "pipe.pth"), os.devnull):
        with pytest.raises(params.ParamError, match="checkpoint: .* is not a regular file"):
            params.embedding_model("iresnet", special)
    with pytest.raises(params.ParamError, match="model: must be one of dlib, iresnet, onnx"):
        params.embedding_model("facenet")
    with pytest.raises(params.ParamError, match="flip: --flip is for iresnet and onnx"):
        params.embedding_model("dlib", flip="true")
    with pytest.raises(params.ParamError, match="detect: --detect is for the dlib model"):
        params.embedding_model("onnx", models["onnx"], detect=True)
    (tmp_path / "model.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(EmbedderError, match="is not a torch checkpoint"):  # told from its first bytes
        IResNetEmbedder(str(tmp_path / "model.pth"))


class _EvolveUnit(torch.nn.Module):
    """face.evoLVe's BasicBlockIR as AdaFace's net.py builds it (the test's reference)."""

    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.shortcut_layer = (nn.MaxPool2d(1, stride) if cin == depth else
                               nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(depth), nn.PReLU(depth),
                                       nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class _EvolveIR(torch.nn.Module):
    """AdaFace's Backbone (mode 'ir', 112x112) at test widths: BGR pixels in, unit vectors out."""

    def __init__(self, widths=(8, 16, 32, 64), units=(2, 1, 2, 1), dim: int = 32):
        super().__init__()
        nn = torch.nn
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        body, cin = [], widths[0]
        for width, n in zip(widths, units):
            body += [_EvolveUnit(cin, width, 2)] + [_EvolveUnit(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(widths[-1] * 7 * 7, dim), nn.BatchNorm1d(dim, affine=False))

    def features(self, bgr):
        return self.output_layer(self.body(self.input_layer(bgr)))

    def forward(self, bgr):
        x = self.features(bgr)
        return x / x.norm(dim=1, keepdim=True)


def test_an_adaface_checkpoint_embeds_as_adaface_does(tmp_path):
    """AdaFace's released .ckpt (face.evoLVe's IR under "model." in a Lightning state_dict, its
    head beside it), fed RGB here, gives the vectors AdaFace's own network gives the BGR image."""
    torch.manual_seed(1)
    ref_net = _trained_batchnorm(_EvolveIR().eval(), affine=True)
    state = {f"model.{k}": v for k, v in ref_net.state_dict().items()}
    torch.save({"state_dict": {**state, "head.kernel": torch.randn(32, 10)}, "epoch": 26}, tmp_path / "ada.ckpt")
    from skimage.data import astronaut

    colour = astronaut()  # LFW's faces are grey: BGR and RGB would be the same image
    batch = chw(np.stack([colour[y:y + 112, x:x + 112] for y, x in [(30, 170), (60, 180), (0, 0), (200, 300)]]))
    bgr = (batch[:, [2, 1, 0]].float() / 255 - 0.5) / 0.5  # AdaFace's to_input
    with torch.no_grad():
        ref = ref_net(bgr).numpy()
        # the flip convention as for every IResNet: the two unnormalised embeddings summed
        ref_flip = ref_net.features(bgr).numpy() + ref_net.features(torch.flip(bgr, dims=[3])).numpy()
    ref_flip /= np.linalg.norm(ref_flip, axis=1, keepdims=True)
    e = IResNetEmbedder(str(tmp_path / "ada.ckpt"))
    assert (e.dim, e.input_size) == (32, 112) and "AdaFace's BGR stem" in e.preprocessing
    assert np.allclose(e.embed(batch), ref, atol=1e-5)
    assert np.allclose(IResNetEmbedder(str(tmp_path / "ada.ckpt"), flip=True).embed(batch), ref_flip, atol=1e-5)
    # IR-SE (a squeeze-excitation module in each unit) is another network: refused, naming it
    torch.save({"state_dict": {**state, "model.body.0.res_layer.6.fc1.weight": torch.zeros(1, 8, 1, 1)}},
               tmp_path / "ada-se.ckpt")
    with pytest.raises(EmbedderError, match="ada-se.ckpt: body.0 has res_layer.6 .*IR-SE"):
        IResNetEmbedder(str(tmp_path / "ada-se.ckpt"))


def _dataset(faces, root: Path, name: str, layout: dict[str, int]) -> fo.Dataset:
    faces.identity_tree(root, layout)
    load_face_dataset(str(root), source="s", domain="synthetic", dataset_name=name)
    return fo.load_dataset(name)


def _one_float16_step(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two stored float16 vectors differ by at most one float16 step per component: a
    network's float32 output moves by ~1e-7 with the batch it ran in (the kernels BLAS and
    oneDNN pick for a batch size, and how threads split it), far below float16's step (~1e-4 at
    these values), but a component that sits on a rounding edge still rounds to the next float16
    (155 of 51,200 components in docs/identity.md's measurement). Bit equality holds for dlib, which embeds one
    image at a time. (1e-6 more for components near 0, where float16's steps are finer than the
    float32 noise.)"""
    step = np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float32)
    return bool(np.all(np.abs(a.astype(np.float32) - b.astype(np.float32)) <= step + 1e-6))


def _vectors(name: str) -> dict[str, np.ndarray]:
    ds = fo.load_dataset(name)
    ds.reload()
    return {p: v for p, v in zip(*ds.values(["filepath", FIELD]))}


def test_refusals_leave_the_dataset_untouched(models, faces, tmp_path, dataset_name, cli_env):
    ds = _dataset(faces, tmp_path / "ids", dataset_name, {"a": 2})
    before = dict(ds.info)
    for args, expected in [
        (["--model", "iresnet", "--checkpoint", str(tmp_path / "missing.pth")], "missing.pth: no such file"),
        (["--model", "onnx", "--checkpoint", models["not_face"]], "not a face-recognition model"),
    ]:
        proc = subprocess.run([FACEAUDIT, "embed", "--dataset", dataset_name, *args], env=cli_env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    ds.reload()
    assert FIELD not in ds.get_field_schema() and ds.info == before


def test_settings_mismatch_refused_until_overwrite_and_sharded_equals_one_run(models, faces, tmp_path,
                                                                                dataset_name):
    ds = _dataset(faces, tmp_path / "ids", dataset_name, {"a": 3, "b": 3, "c": 3})
    one = dataset_name + "-one"
    ds.clone(one, persistent=True)
    try:
        for i in range(2):
            report = drive(iter_embed(dataset_name, model="iresnet", checkpoint=models["pth"], device="cpu",
                                      batch_size=2, workers=0, shard=f"{i}/2"))
            assert report.shard == f"{i}/2"
        drive(iter_embed(one, model="iresnet", checkpoint=models["pth"], device="cpu", batch_size=5, workers=1))
        sharded, single = _vectors(dataset_name), _vectors(one)
        assert len(sharded) == 9 and all(v is not None for v in sharded.values())
        assert all(sharded[k].dtype == np.float16 and sharded[k].shape == (64,) for k in sharded)
        assert sharded.keys() == single.keys() and all(_one_float16_step(sharded[k], single[k]) for k in single)
        info = fo.load_dataset(dataset_name).info["faceaudit"]["embedding"]
        assert {k: info[k] for k in ("model", "checkpoint", "dim", "threshold")} == {
            "model": "iresnet", "checkpoint": models["pth"], "dim": 64, "threshold": 0.3}
        assert "(x - 127.5) / 127.5" in info["preprocessing"]

        # vectors of other settings are refused before anything is written, then --overwrite re-embeds
        with pytest.raises(EmbedError, match="other settings: flip False \\(now True\\)"):
            drive(iter_embed(dataset_name, model="iresnet", checkpoint=models["pth"], flip=True, workers=0))
        assert all(np.array_equal(v, sharded[k]) for k, v in _vectors(dataset_name).items())
        report = drive(iter_embed(dataset_name, model="onnx", checkpoint=models["onnx"], flip=True, workers=0,
                                  overwrite=True))
        assert report.embedded == 9 and report.already_embedded == 0
        assert fo.load_dataset(dataset_name).info["faceaudit"]["embedding"]["model"] == "onnx"
    finally:
        fo.delete_dataset(one)


def test_sigkill_mid_run_then_rerun_equals_a_one_shot_run(faces, tmp_path, dataset_name, cli_env):
    """dlib's real weights, from the command line; the run is killed once some vectors are written."""
    ds = _dataset(faces, tmp_path / "ids", dataset_name, {f"p{k}": 4 for k in range(6)})
    clean = dataset_name + "-clean"
    ds.clone(clean, persistent=True)
    try:
        args = [FACEAUDIT, "embed", "--device", "cpu", "--batch-size", "2", "--workers", "0", "--quiet"]
        proc = subprocess.Popen([*args, "--dataset", dataset_name], env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = ds._sample_collection
        deadline = time.time() + 300
        while samples.count_documents({FIELD: {"$exists": True}}) < 4:
            assert proc.poll() is None, "embed ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        ds.reload()  # the field the embed process added
        with pytest.raises(locks.Busy, match=f"faceaudit embed .* is running \\(process {proc.pid} "):
            identity.identity_audit(ds, identity.options(threshold=0.5))  # its vectors are being written
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = samples.count_documents({FIELD: {"$exists": True}})
        assert 4 <= partial < 24, partial
        out = subprocess.run([*args, "--dataset", dataset_name], env=cli_env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        assert f"{24 - partial} samples embedded" in out.stdout and f"{partial} already embedded" in out.stdout
        audit = identity.identity_audit(ds, identity.options(threshold=0.5), similarity_index=False)
        assert audit["sources"]  # the killed run's lock entry (its process gone) did not block it
        drive(iter_embed(clean, device="cpu", batch_size=7, workers=1))
        resumed, one = _vectors(dataset_name), _vectors(clean)
        assert len(resumed) == 24 and all(np.array_equal(resumed[k], one[k]) for k in one)
        paths = sorted(one)
        stored = np.stack([one[p] for p in paths]).astype(np.float32)
        from PIL import Image

        ref = reference_dlib(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
        assert np.abs(stored - ref).max() < 2e-3  # float16 storage
    finally:
        fo.delete_dataset(clean)


def test_operator_embeds_now_delegated_and_in_shards(models, faces, tmp_path, dataset_name):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = _dataset(faces, tmp_path / "ids", dataset_name, {"a": 3, "b": 3})
    p = {"model": "iresnet", "checkpoint": models["pth"], "device": "cpu", "batch_size": 2}
    view_a = ds.match(fo.ViewField("identity") == "a")
    result = foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "view": view_a, "params": {**p, "delegate": "false"}})
    assert not result.delegated and result.error is None, result.error
    ds.reload()
    assert ds.exists(FIELD).count_values("identity") == {"a": 3}

    result = foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": {**p, "delegate": "true", "shards": 2}})
    assert result.error is None, result.error
    for _ in range(2):  # the fan-out operation, then the shards it queued
        DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    ops = DelegatedOperationService().list_operations(operator=EMBED_URI, dataset_name=dataset_name)
    assert {o.run_state for o in ops} == {"completed"}, [(o.run_state, o.run_state and o.result) for o in ops]
    ds.reload()
    assert ds.exists(FIELD).count() == 6
    # the form refuses an ONNX file that is not a face model (Execute stays disabled)
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="Path: checkpoint.*not a face-recognition model"):
        foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": {
            "model": "onnx", "checkpoint": models["not_face"], "delegate": "false"}})
    assert ds.exists(FIELD).count() == 6

    # new-user review B4: another model over the stored vectors is refused in the form, on the
    # Overwrite box the form now has, in the form's words (the CLI's say --overwrite); ticked,
    # it embeds every sample again, as `faceaudit embed --overwrite` does
    onnx = {"model": "onnx", "checkpoint": models["onnx"], "device": "cpu", "batch_size": 4, "delegate": "false"}
    form = _form(ds, onnx)
    assert form["overwrite"].invalid and not any(p.invalid for k, p in form.items() if k != "overwrite")
    refusal = form["overwrite"].error_message
    assert "other settings: model 'iresnet' (now 'onnx')" in refusal
    assert refusal.endswith('run with the stored settings, or tick "Overwrite" to embed every sample again')
    assert "--" not in refusal, refusal
    with pytest.raises(ExecutionError, match="other settings"):
        foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": onnx})
    split = _form(ds, {**onnx, "overwrite": True, "shards": 2})["overwrite"]  # each shard would drop the others'
    assert split.invalid and split.error_message == ('Overwrite: drops every stored vector first: embed in one job '
                                                     '("Split into N jobs" 1), then split later runs')
    not_a_model = tmp_path / "notes.pth"
    not_a_model.write_text("notes")  # a file (the form's check): the run refuses it; a Python caller is told
    with pytest.raises(ExecutionError, match="notes.pth is not a torch checkpoint"):
        foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": {
            "model": "iresnet", "checkpoint": str(not_a_model), "overwrite": True, "delegate": "false"}})
    ds.reload()
    assert ds.exists(FIELD).count() == 6 and ds.info["faceaudit"]["embedding"]["model"] == "iresnet"
    assert not any(p.invalid for p in _form(ds, {**onnx, "overwrite": True}).values())
    result = foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": {**onnx, "overwrite": True}})
    assert result.error is None, result.error
    ds.reload()
    assert ds.exists(FIELD).count() == 6 and ds.info["faceaudit"]["embedding"]["model"] == "onnx"


def _form(ds, p: dict) -> dict:
    """The embed form's fields for parameters ``p``, as the App resolves them."""
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": p})
    return OperatorRegistry().get_operator(EMBED_URI).resolve_input(ctx).type.properties


def test_a_relative_model_file_is_queued_absolute(models, faces, tmp_path, dataset_name, monkeypatch):
    """The App's form takes a model file relative to the App server's folder (its check does);
    the queued operation must name it absolutely, or a `fiftyone delegated launch` worker started
    in another folder fails with "no such file" (as annotate and load already do)."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = _dataset(faces, tmp_path / "ids", dataset_name, {"a": 2})
    monkeypatch.chdir(Path(models["pth"]).parent)  # the App server's working folder
    p = {"model": "iresnet", "checkpoint": "backbone.pth", "device": "cpu", "batch_size": 2, "delegate": "true"}
    result = foo.execute_operator(EMBED_URI, ctx={"dataset": ds, "params": p})
    assert result.delegated and result.error is None, result.error
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "worker")  # the worker's
    DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    [op] = DelegatedOperationService().list_operations(operator=EMBED_URI, dataset_name=dataset_name)
    assert op.run_state == "completed", (op.run_state, op.result and op.result.error)
    ds.reload()
    assert ds.exists(FIELD).count() == 2
    assert ds.info["faceaudit"]["embedding"]["checkpoint"] == models["pth"]


def test_cli_delegate_overwrite_queues_one_job_that_embeds_every_sample_again(models, faces, tmp_path,
                                                                              dataset_name):
    """`faceaudit embed --delegate --overwrite` once queued the job without its overwrite: the
    user who had asked for it was refused with "or --overwrite to embed every sample again", and
    with every sample embedded already, nothing was left to queue."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from clirun import faceaudit, in_process

    _dataset(faces, tmp_path / "ids", dataset_name, {"a": 2, "b": 2})
    drive(iter_embed(dataset_name, model="iresnet", checkpoint=models["pth"], device="cpu", batch_size=4, workers=0))
    before = _vectors(dataset_name)
    delegate = ["embed", "--dataset", dataset_name, "--model", "onnx", "--checkpoint", models["onnx"], "--flip",
                "--device", "cpu", "--batch-size", "4", "--delegate"]
    refused = in_process(delegate)
    assert refused.returncode == 2 and "other settings" in refused.stderr, refused.stdout + refused.stderr
    split = in_process([*delegate, "--overwrite", "--shards", "2"])
    assert split.returncode == 2 and "drops every stored vector first" in split.stderr, split.stderr
    service = DelegatedOperationService()
    assert not service.list_operations(operator=EMBED_URI, dataset_name=dataset_name)

    faceaudit([*delegate, "--overwrite"])
    [op] = service.list_operations(operator=EMBED_URI, dataset_name=dataset_name)
    assert op.context.request_params["params"]["overwrite"] is True
    service.execute_queued_operations(dataset_name=dataset_name)
    [op] = service.list_operations(operator=EMBED_URI, dataset_name=dataset_name)
    assert op.run_state == "completed", (op.run_state, op.result and op.result.error)
    info = fo.load_dataset(dataset_name).info["faceaudit"]["embedding"]
    assert (info["model"], info["flip"]) == ("onnx", True)
    after = _vectors(dataset_name)
    assert after.keys() == before.keys() and not any(np.array_equal(after[k], before[k]) for k in before)


def test_embedding_section_of_a_run_config(tmp_path, models):
    from faceaudit.config import ConfigError, load_config

    (tmp_path / "faces").mkdir()
    base = '[[sources]]\npath = "faces"\nname = "x"\ndomain = "real"\n\n[model]\nkind = "agegender"\n\n'
    (tmp_path / "a.toml").write_text(base + f'[embedding]\nmodel = "iresnet"\ncheckpoint = "{models["pth"]}"\n'
                                     'flip = true\n')
    e = load_config(str(tmp_path / "a.toml")).embedding
    assert (e.model, e.checkpoint, e.flip, e.detect) == ("iresnet", models["pth"], True, False)
    (tmp_path / "b.toml").write_text(base + f'[embedding]\nmodel = "onnx"\ncheckpoint = "{models["not_face"]}"\n')
    with pytest.raises(ConfigError, match="line 11: embedding.checkpoint: .*not a face-recognition model"):
        load_config(str(tmp_path / "b.toml"))
    (tmp_path / "c.toml").write_text(base.replace('[model]', '[embedding]\nmodel = "dlib"\n\n[model]'))
    assert load_config(str(tmp_path / "c.toml")).embedding.model == "dlib"


def test_detect_tags_images_without_a_face_and_reruns_skip_them(tmp_path, dataset_name):
    from PIL import Image
    from skimage.data import astronaut

    from fiftyone_plugin.embed import NO_FACE_TAG

    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    load_face_dataset(str(tmp_path), source="photos", domain="real", format="flat", dataset_name=dataset_name)
    report = drive(iter_embed(dataset_name, detect=True, device="cpu", workers=0))
    assert (report.embedded, report.no_face) == (1, 1), report
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    tagged = ds.match_tags(NO_FACE_TAG)
    assert [os.path.basename(p) for p in tagged.values("filepath")] == ["wall.png"]
    assert tagged.exists(FIELD).count() == 0 and ds.exists(FIELD).count() == 1
    assert ds.info["faceaudit"]["embedding"]["detect"] is True
    again = drive(iter_embed(dataset_name, detect=True, device="cpu", workers=0))
    assert (again.embedded, again.already_embedded, again.skipped) == (0, 1, 1)


def test_the_form_runs_the_demos_size_now(dataset_name):
    """The demo's 201 faces: the form's default is Run now (it was Delegate, and a new user with
    no worker running saw Schedule do nothing); above EMBED_RUN_NOW_UP_TO, Delegate."""
    import fiftyone as fo
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nowhere/{k}.jpg") for k in range(201)])
    operator = OperatorRegistry().get_operator(EMBED_URI)

    def default_mode():
        ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}})
        return operator.resolve_input(ctx).type.properties["delegate"].default

    assert default_mode() == "false"
    ds.add_samples([fo.Sample(filepath=f"/nowhere/more-{k}.jpg") for k in range(300)])
    assert default_mode() == "true"


def test_two_embeds_of_other_settings_at_once_never_mix_vectors(faces, tmp_path, dataset_name, cli_env):
    """`faceaudit embed` and `faceaudit embed --detect` started together: both ran (rc 0), info
    said detect=False while samples tagged no_face held a vector. Now one of them is refused in
    one line (by the lock, naming the running one, or by the settings it recorded) and every
    vector is of the recorded settings."""
    from fiftyone_plugin.embed import NO_FACE_TAG

    _dataset(faces, tmp_path / "ids", dataset_name, {f"p{k}": 2 for k in range(8)})
    args = [FACEAUDIT, "embed", "--dataset", dataset_name, "--device", "cpu", "--batch-size", "2", "--workers", "0",
            "--quiet"]
    procs = [subprocess.Popen([*args, *extra], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for extra in ([], ["--detect"])]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 2)
    assert len(err.strip().splitlines()) == 1 and ("other settings" in err), err
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    detect = ds.info["faceaudit"]["embedding"]["detect"]
    assert procs[int(detect)].returncode == 0  # the run that succeeded is the one recorded
    assert ds.match_tags(NO_FACE_TAG).exists(FIELD).count() == 0
    assert ds.exists(FIELD).count() + ds.match_tags(NO_FACE_TAG).count() == 16
    if not detect:
        assert ds.match_tags(NO_FACE_TAG).count() == 0


def test_overwrite_or_other_settings_beside_a_running_embed_are_refused_its_shards_join(faces, tmp_path,
                                                                                         dataset_name, cli_env):
    """`embed --overwrite` (or another shard's --overwrite) beside a running embed dropped the
    vectors it was writing. While a real embed process writes, --overwrite and other settings are
    refused in one line naming it, before anything is written; the same settings join it."""
    from fiftyone_plugin.embed import EmbedOptions, writing_vectors

    ds = _dataset(faces, tmp_path / "ids", dataset_name, {f"p{k}": 4 for k in range(16)})
    proc = subprocess.Popen([FACEAUDIT, "embed", "--dataset", dataset_name, "--device", "cpu", "--batch-size", "1",
                             "--workers", "0", "--quiet", "--shard", "0/2"], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = ds._sample_collection
    deadline = time.time() + 300
    while samples.count_documents({FIELD: {"$exists": True}}) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    ds.reload()
    written = samples.count_documents({FIELD: {"$exists": True}})
    for kw, why in [({"overwrite": True}, "this run needs it alone (--overwrite drops every stored vector first)"),
                    ({"detect": True}, "with other settings (model 'dlib', checkpoint None, detect False")]:
        with pytest.raises(locks.Busy) as refused:
            drive(iter_embed(dataset_name, device="cpu", workers=0, **kw))
        text = str(refused.value)
        assert len(text.splitlines()) == 1 and f"is running (process {proc.pid} " in text and why in text, text
        assert samples.count_documents({FIELD: {"$exists": True}}) >= written  # nothing dropped
    assert proc.poll() is None  # the refusals were beside the running process
    with writing_vectors(ds, EmbedOptions()):  # shard 1 of the same settings gets in beside it
        assert proc.poll() is None
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    drive(iter_embed(dataset_name, device="cpu", workers=0, shard="1/2"))
    assert samples.count_documents({FIELD: {"$exists": True}}) == 64
