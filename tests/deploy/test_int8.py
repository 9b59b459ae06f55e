"""ONNX exports that describe themselves, int8 static quantisation, and ``reidkit export --int8``."""
import onnx
import pytest
import torch

import reidkit
from reidkit.cli import main
from reidkit.deploy.onnx_model import OnnxEmbedding, calibration_batches, quantize_onnx, read_spec
from reidkit.deploy.optimize import export_onnx
from reidkit.engine.checkpoint import CheckpointError, load_embedding_model


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run's model exported to ONNX with its spec, and its torch model."""
    model, spec = load_embedding_model(tiny_run / "best.pth")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", spec.image_size, spec=spec)
    return path, model, spec


def _images(tiny_data):
    return sorted(str(p) for p in (tiny_data / "bounding_box_train").glob("*.jpg"))


def test_an_export_records_its_spec_and_embeds_as_the_checkpoint(exported, tiny_data, tiny_run):
    path, model, spec = exported
    assert read_spec(path) == spec
    paths = _images(tiny_data)[:6]
    from_onnx = reidkit.FeatureExtractor(weights=path)
    from_checkpoint = reidkit.FeatureExtractor(weights=tiny_run / "best.pth", backend="torch", optimize=False)
    assert (from_onnx.image_size, from_onnx.model_name) == (spec.image_size, spec.arch)
    torch.testing.assert_close(from_onnx(paths), from_checkpoint(paths), atol=1e-4, rtol=1e-4)
    with pytest.raises(CheckpointError, match="input 64x32"):           # an explicit size that contradicts it
        reidkit.FeatureExtractor(weights=path, image_size=(64, 32))
    with pytest.raises(ValueError, match="runs on the CPU"):
        reidkit.FeatureExtractor(weights=path, device="cuda")


def test_int8_model_is_integer_and_close_to_fp32(exported, tiny_data, tmp_path):
    path, _, spec = exported
    paths = _images(tiny_data)
    batches = calibration_batches(paths, spec.image_size, spec.mean, spec.std, count=48, batch_size=16)
    out = quantize_onnx(path, tmp_path / "m.int8.onnx", batches)
    graph = onnx.load(str(out)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    conv_weights = [t for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 4]
    assert len(int8_weights) >= len(conv_weights)                  # every convolution's weights quantised
    assert read_spec(out) == spec                                  # the spec survives quantisation
    x = torch.from_numpy(next(calibration_batches(paths[::-1], spec.image_size, spec.mean, spec.std, 32, 32)))
    fp32, int8 = OnnxEmbedding(path)(x), OnnxEmbedding(out)(x)
    cosine = torch.nn.functional.cosine_similarity(fp32, int8)
    assert cosine.min() > 0.95, cosine
    assert not torch.equal(fp32, int8)                             # it is not the fp32 model again


def test_quantisation_needs_calibration_images(exported, tmp_path):
    path, _, _ = exported
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(path, tmp_path / "q.onnx", iter([]))
    assert not (tmp_path / "q.onnx").exists()
    with pytest.raises(ValueError, match="percentile"):
        quantize_onnx(path, tmp_path / "q.onnx", iter([]), method="kl")
    with pytest.raises(ValueError, match="no calibration images found"):
        next(calibration_batches([], (32, 16), (0, 0, 0), (1, 1, 1)))


@pytest.mark.slow
def test_export_int8_reports_both_models_and_fails_beyond_the_tolerance(tiny_run, tiny_data, tmp_path, capsys):
    common = ["export", str(tiny_run / "recipe.json"), f"data.root={tiny_data}", "--weights",
              str(tiny_run / "best.pth"), "--int8", "--calibration-images", "32", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a.onnx"), "--max-map-drop", "100"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "a.onnx").is_file() and (tmp_path / "a.int8.onnx").is_file()
    maps = {line.split(":")[0].strip(): float(line.split("mAP")[1].split()[0])
            for line in text.splitlines() if line.strip().startswith(("fp32:", "int8:"))}
    assert set(maps) == {"fp32", "int8"} and all(0 < v <= 100 for v in maps.values())
    # issue 49 H: an existing int8 model is not replaced without --overwrite (refused before any work)
    kept = (tmp_path / "a.int8.onnx").read_bytes()
    assert main([*common, "--out", str(tmp_path / "a.onnx"), "--max-map-drop", "100"]) == 2
    assert "a.int8.onnx exists" in capsys.readouterr().err and (tmp_path / "a.int8.onnx").read_bytes() == kept
    # the same models against an impossible tolerance (int8 more than 100 points better): exit 1
    assert main([*common, "--out", str(tmp_path / "b.onnx"), "--max-map-drop", "-100"]) == 1
    assert "BEYOND" in capsys.readouterr().out
    # an int8 file embeds through `reidkit extract` with nothing else named
    assert main(["extract", str(tiny_data / "query"), "--weights", str(tmp_path / "a.int8.onnx"),
                 "--out", str(tmp_path / "g.npz"), "--no-progress"]) == 0
    gallery = reidkit.GalleryIndex.load(tmp_path / "g.npz")
    assert len(gallery) == len(list((tiny_data / "query").glob("*.jpg")))
    assert gallery.meta["arch"] == "resnet18_bnneck" and gallery.meta["weights"].endswith("a.int8.onnx")


def test_a_missing_or_damaged_onnx_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found: .*nope.onnx"):
        reidkit.FeatureExtractor(weights=tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ValueError, match="bad.onnx: not a readable ONNX model"):
        read_spec(tmp_path / "bad.onnx")


def test_the_cpu_and_its_int8_features_are_read_from_cpuinfo():
    from reidkit.engine.device import describe_cpu
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n" \
           "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    assert describe_cpu(epyc) == ("AMD EPYC 9R14", ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 bf16"])
    xeon = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t: avx2 avx512f avx512_vnni amx_int8 amx_bf16\n"
    assert describe_cpu(xeon)[1] == ["AVX2", "AVX-512", "AVX-512 VNNI", "AMX-INT8", "AMX-BF16"]


def test_deploy_advice_follows_the_measured_speed(tmp_path):
    from reidkit.deploy.model_files import deploy_advice
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    assert deploy_advice(2.86, fp32, int8) == f"int8 is 2.86x the fp32 speed here: deploy {int8}"
    assert deploy_advice(1.02, fp32, int8).endswith(f"no gain: keep {fp32}")
    assert deploy_advice(0.66, fp32, int8).startswith(f"int8 is 0.66x the fp32 speed here, SLOWER: keep {fp32}")


@pytest.mark.slow
def test_export_times_both_models_records_the_machine_and_keeps_int8_only_when_faster(tiny_run, tiny_data, tmp_path,
                                                                                       capsys, monkeypatch):
    from reidkit.deploy import onnx_model
    from reidkit.deploy.onnx_model import read_int8_check
    from reidkit.engine.device import describe_cpu
    common = ["export", str(tiny_run / "recipe.json"), f"data.root={tiny_data}", "--weights",
              str(tiny_run / "best.pth"), "--int8", "--calibration-images", "16", "--no-progress", "--no-check"]
    assert main([*common, "--out", str(tmp_path / "a.onnx")]) == 0
    out = capsys.readouterr().out
    check = read_int8_check(tmp_path / "a.int8.onnx")
    cpu, features = describe_cpu()
    assert check["cpu"] == cpu and check["cpu_features"] == features
    assert check["speedup"] == pytest.approx(check["int8_images_per_s"] / check["fp32_images_per_s"], rel=1e-2)
    assert f"speed on this machine ({cpu}" in out and f"fp32 {check['fp32_images_per_s']:.1f} img/s" in out
    calls = []

    def slower_int8(models, images, threads=None, rounds=5):      # a machine where int8 loses
        calls.append(sorted(models))
        return {"fp32": 200.0, "int8": 130.0}
    monkeypatch.setattr(onnx_model, "measure_speed", slower_int8)
    assert main([*common, "--out", str(tmp_path / "b.onnx"), "--int8-if-faster"]) == 0
    out = capsys.readouterr().out
    assert calls == [["fp32", "int8"]]
    assert f"int8 is 0.65x the fp32 speed here, SLOWER: keep {tmp_path / 'b.onnx'}" in out
    assert "--int8-if-faster" in out and not (tmp_path / "b.int8.onnx").exists() and (tmp_path / "b.onnx").exists()
    assert main([*common, "--out", str(tmp_path / "c.onnx")]) == 0        # without the flag the file stays
    assert read_int8_check(tmp_path / "c.int8.onnx")["speedup"] == 0.65
