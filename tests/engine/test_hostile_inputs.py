"""Silent wrong results and raw tracebacks of issue 39 (items 7-15 and the tracebacks list): each case is now an
error that names the file, key or value, a warning, or a correct result.  (Recipe parsing: tests/
test_recipe_files_hostile.py; data loss: test_nothing_lost.py.)"""
import errno
import io
import json
import logging
import os
import shutil
import signal
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from reidkit.cli import main
from reidkit.data import build_dataset
from reidkit.data.images import load_rgb
from reidkit.data.records import DatasetLayoutError
from reidkit.deploy import GalleryIndex
from reidkit.engine import CheckpointError, Trainer
from reidkit.engine.checkpoint import NonFiniteWeightsError, load_checkpoint
from reidkit.engine.guards import TrainingInterrupted
from reidkit.engine.pipeline import check_positive_pairs
from reidkit.evaluation import evaluate_features
from reidkit.evaluation.metrics import CollapsedEmbeddingsWarning
from reidkit.logs import QuietFileHandler
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe


def copy_run(tiny_run, tmp_path):
    """A writable copy of the session's one-epoch tiny run."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.lock"))
    return run


# 8. an export of NaN weights is refused, and a NaN parity check fails ------------------------------------
def test_export_refuses_a_checkpoint_with_nan_batchnorm_statistics(tiny_run, tiny_data, tmp_path, capsys):
    state = load_checkpoint(tiny_run / "best.pth")
    key = next(k for k in state["state_dict"] if k.endswith("running_var"))
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("nan"))
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)                         # (save_checkpoint itself refuses to write it)
    code = main(["export", str(tiny_run / "recipe.json"), f"data.root={tiny_data}", "--weights", str(bad),
                 "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert f"nan.pth: 1 tensor(s): {key} hold NaN or infinite values" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# 9. a gallery knows its model's weights by their fingerprint ---------------------------------------------------
@pytest.mark.slow
def test_a_gallery_refuses_weights_that_changed_since_it_was_built(tiny_data, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((tiny_data / "query").iterdir())[:4]:
        shutil.copy(p, images / p.name)
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": build_model("osnet_x0_25", 2, pretrained="none").state_dict()}, weights)
    original = weights.read_bytes()
    gallery = tmp_path / "g.npz"
    common = ["--device", "cpu", "--no-progress"]
    assert main(["extract", str(images), "--arch", "osnet_x0_25", "--size", "64", "32", "--weights", str(weights),
                 "--out", str(gallery), *common]) == 0
    assert len(GalleryIndex.load(gallery).meta["weights_sha256"]) == 64
    torch.manual_seed(1)                          # the file replaced by another model
    torch.save({"state_dict": build_model("osnet_x0_25", 2, pretrained="none").state_dict()}, weights)
    capsys.readouterr()
    query = str(sorted(images.iterdir())[0])
    assert main(["search", str(gallery), query, "--device", "cpu"]) == 2
    assert main(["extract", str(images), "--add-to", str(gallery), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("now has") == 2 and "another model" in err
    kept = tmp_path / "kept.pth"
    kept.write_bytes(original)                    # the original file, moved: named with --weights
    assert main(["search", str(gallery), query, "--device", "cpu", "--weights", str(kept)]) == 0


# 10. resume refuses what changes the model's meaning and says what else changed ------------------------------
def test_resume_refuses_another_input_size_and_says_what_changed(tiny_run, tiny_data, tmp_path, caplog):
    run = copy_run(tiny_run, tmp_path)
    recipe_before = (run / "recipe.json").read_text()
    last = run / "last.pth"

    def trainer(*extra):
        return Trainer(load_recipe(None, [*tiny_overrides(tiny_data, run, epochs=2), *extra]), progress=False)
    with pytest.raises(CheckpointError, match=r"another model or other inputs .*data.height: 32 -> 48"):
        trainer("data.height=48").fit(resume=last)
    with pytest.raises(CheckpointError, match=r"last.pth is at epoch 1 and this recipe's train.epochs=1: nothing "
                                              r"is left to train. Raise train.epochs"):
        Trainer(load_recipe(None, tiny_overrides(tiny_data, run, epochs=1)), progress=False).fit(resume=last)
    assert (run / "recipe.json").read_text() == recipe_before
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        trainer("data.batch_size=12", "data.num_instances=3").fit(resume=last)
    assert "with a changed recipe: data.batch_size: 8 -> 12; data.num_instances: 2 -> 3; train.epochs: 1 -> 2" \
        in caplog.text
    assert (run / "recipe.json").read_text() == recipe_before          # it still describes epoch 1
    resumed = json.loads((run / "recipe_resumed_epoch_1.json").read_text())
    assert resumed["data"]["batch_size"] == 12 and load_checkpoint(run / "last.pth")["epoch"] == 2


def test_the_advice_after_a_wrong_optimiser_resume_works(tiny_run, tiny_data, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    sgd = [*tiny_overrides(tiny_data, run, epochs=2), "optim.name=sgd"]
    with pytest.raises(CheckpointError, match=r"start a new run from its weights with model.pretrained=") as e:
        Trainer(load_recipe(None, sgd), progress=False).fit(resume=run / "last.pth")
    assert not (run / "recipe_resumed_epoch_1.json").exists()            # refused before anything was written
    advice = str(e.value).rsplit("model.pretrained=", 1)[1]
    fresh = Trainer(load_recipe(None, [*sgd, f"model.pretrained={advice}", f"train.output_dir={tmp_path / 'new'}"]),
                    progress=False)
    trained = load_checkpoint(run / "last.pth")["state_dict"]
    own = fresh.model.state_dict()
    assert torch.equal(own["backbone.conv1.weight"], trained["backbone.conv1.weight"])


# 11. mutual-learning peers are checked for non-finite values like the model ----------------------------------
@pytest.mark.slow
def test_an_infinite_peer_statistic_stops_training_before_any_save(tiny_data, tmp_path):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "dml", epochs=1)
                         + ["mutual.peers=[resnet18_bnneck]"])
    trainer = Trainer(recipe, progress=False)
    peer = trainer.piece("mutual").peers[0]
    bn = next(m for m in peer.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(float("inf"))
    with pytest.raises(NonFiniteWeightsError, match=r"mutual:peers\.0\..*running_var"):
        trainer.fit()
    assert not (tmp_path / "dml" / "last.pth").exists()


# 13. collapsed embeddings are flagged ----------------------------------------------------------------------
def test_collapsed_embeddings_warn_that_the_figures_mean_nothing():
    rng = np.random.default_rng(0)
    q_pids, g_pids = np.arange(10) % 5, np.arange(40) % 5
    q_cams, g_cams = np.zeros(10, int), np.ones(40, int)
    same = np.ones((50, 16), np.float32)
    with pytest.warns(CollapsedEmbeddingsWarning, match="10 of 10 queries have every gallery image at the same"):
        evaluate_features(same[:10], same[10:], q_pids, g_pids, q_cams, g_cams, metric="cosine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedEmbeddingsWarning)
        feats = rng.standard_normal((50, 16)).astype(np.float32)
        evaluate_features(feats[:10], feats[10:], q_pids, g_pids, q_cams, g_cams, metric="cosine")


# 14. images decode as their viewers show them --------------------------------------------------------------
def test_exif_orientation_and_deep_tiffs_decode_as_shown(tmp_path):
    a = np.zeros((20, 10, 3), np.uint8)
    a[:5, :, 0] = 255                                  # a red band along the stored image's top
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6                                   # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=100)
    shown = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert shown.shape == (10, 20, 3)                  # upright: wider than tall
    assert shown[:, -5:, 0].mean() > 200 and shown[:, :10, 0].mean() < 50     # the band is now on the right
    values = (np.arange(200).reshape(20, 10) * 300).astype(np.float32)        # float TIFF in 0..59700
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    assert abs(np.asarray(load_rgb(tmp_path / "float.tif"))[..., 0].astype(float).mean() - (values / 257).mean()) < 1
    twelve = (np.arange(200).reshape(20, 10) * 20).astype(np.int32)           # 12-bit data in a 32-bit TIFF
    Image.fromarray(twelve, "I").save(tmp_path / "twelve.tif")
    got = np.asarray(load_rgb(tmp_path / "twelve.tif"))[..., 0].astype(float)
    assert np.abs(got - np.round(twelve * 255 / 4095)).max() <= 1


# 15. triplet recipes need positives -----------------------------------------------------------------------
def test_a_triplet_loss_on_single_image_identities_is_refused(caplog):
    recipe = load_recipe(None, ["data.batch_size=8", "data.num_instances=2"])
    with pytest.raises(ValueError, match="none of the 12 training identities has two images"):
        check_positive_pairs(recipe, np.arange(12))
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        check_positive_pairs(recipe, np.array([0, 0, 1, 2, 3, 4]))
    assert "only 1 of 5 training identities have two or more images" in caplog.text
    check_positive_pairs(load_recipe(None, ["loss.triplet_weight=0", "data.sampler=random"]), np.arange(12))


# tracebacks that are now one-line errors -------------------------------------------------------------------
def test_faiss_index_kinds_on_too_few_images_are_named():
    x = np.random.default_rng(0).standard_normal((46, 64)).astype(np.float32)
    for kind, said in [("ivfpq", "need at least 256 images"), ("hnswpq", "need at least 256 images"),
                       ("IVF4096,Flat", "4096 inverted lists but the gallery only 46 images")]:
        with pytest.raises(ValueError, match=said):
            GalleryIndex(x, [str(i) for i in range(46)], index=kind).search(x[:1], 5)


def test_gallery_headers_that_are_not_reidkits_are_named(tmp_path):
    for header, said in [({"format": 3, "nprobe": 8, "meta": {}}, "the header has no 'metric'"),
                         ([1, 2], "the header is a JSON list"),
                         ({"format": 3, "metric": "cosine", "nprobe": "8", "meta": {}}, "the header's 'nprobe'")]:
        path = tmp_path / "g.npz"
        with open(path, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), paths_json=np.frombuffer(b"[]", np.uint8))
        with pytest.raises(ValueError, match=f"g.npz: {said}"):
            GalleryIndex.load(path)


def test_damaged_and_escaping_onnx_files_are_named(tmp_path, capsys):
    truncated = tmp_path / "cut.onnx"
    whole = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["images"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 8, 8])]))
    truncated.write_bytes(whole.SerializeToString()[:20])
    (tmp_path / "text.onnx").write_text("not a model at all")
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    weight.data_location = onnx.TensorProto.EXTERNAL
    del weight.float_data[:]
    for key, value in (("location", "../../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    escaping = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["images", "w"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [4])], [weight]))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(tmp_path / "crop.png")
    onnx.save(escaping, str(tmp_path / "sub" / "deeper" / "esc.onnx"))
    for name in ("cut.onnx", "text.onnx", "sub/deeper/esc.onnx"):
        assert main(["import-onnx", str(tmp_path / name), "--arch", "osnet_x0_25",
                     "--out", str(tmp_path / "o.pth")]) == 2
        assert f"{name}: not a readable ONNX model" in capsys.readouterr().err
        assert main(["extract", str(tmp_path), "--weights", str(tmp_path / name), "--out",
                     str(tmp_path / "g.npz"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert name in err and "Traceback" not in err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "g.npz").exists()


def test_a_foreign_fixed_batch_onnx_embeds_like_its_torch_model(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18_bnneck", 2, pretrained="none").eval()
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 32), str(foreign), input_names=["input.1"],
                      output_names=["embedding"], dynamo=False)      # batch of exactly 1, another input name
    images = sorted(str(p) for p in (tiny_data / "query").iterdir())[:5]
    import reidkit
    from_onnx = reidkit.FeatureExtractor(weights=foreign, batch_size=4)
    assert from_onnx.image_size == (64, 32)                           # the model's own fixed size
    reference = reidkit.FeatureExtractor("resnet18_bnneck", weights=None, image_size=(64, 32), num_classes=2,
                                         backend="torch", optimize=False)
    reference.model.load_state_dict(model.state_dict())
    torch.testing.assert_close(from_onnx(images), reference(images), atol=1e-4, rtol=1e-4)


def test_ctrl_c_finishes_the_step_and_says_how_to_resume(tiny_data, tmp_path):
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=3)), progress=False)
    steps_per_epoch = len(trainer.loader)
    seen = []
    before = signal.getsignal(signal.SIGINT)     # Python's handler; SIG_IGN when pytest runs as a background job

    def press_ctrl_c(step, terms):
        seen.append(step)
        if step == steps_per_epoch + 2:                # epoch 2, iteration 2
            os.kill(os.getpid(), signal.SIGINT)
    trainer.on_check = press_ctrl_c
    with pytest.raises(TrainingInterrupted, match=rf"interrupted at epoch 2, iteration 2 of {steps_per_epoch}, after "
                                                  rf"the step finished: .*last.pth holds the end of epoch 1 "
                                                  rf"\(intact\); continue with --resume .*last.pth"):
        trainer.fit()
    assert trainer.step == steps_per_epoch + 2                         # the step in progress was finished
    assert load_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is before                           # the handler is put back


def test_interrupted_commands_exit_130_without_a_traceback(monkeypatch, capsys):
    from reidkit import cli

    def interrupted(args):
        raise TrainingInterrupted("interrupted at epoch 2, iteration 2 of 5: ...")
    monkeypatch.setattr(cli, "cmd_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "reidkit models: interrupted at epoch 2, iteration 2 of 5: ..."


def test_data_synth_into_an_impossible_place_is_named_and_follows_the_umask(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path / "file" / "data"), "--ids", "4", "--cameras", "2",
                 "--distractors", "0"]) == 2
    assert "file is a file, not a folder" in capsys.readouterr().err
    import tempfile as tempfile_module

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")
    with monkeypatch.context() as m:
        m.setattr(tempfile_module, "mkdtemp", read_only)
        assert main(["data", "synth", "--out", str(tmp_path / "ro"), "--ids", "4", "--cameras", "2",
                     "--distractors", "0"]) == 2
    assert "cannot write the synthetic dataset into" in capsys.readouterr().err
    old = os.umask(0o022)
    try:
        assert main(["data", "synth", "--out", str(tmp_path / "ok"), "--ids", "4", "--cameras", "2",
                     "--distractors", "0"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "ok").stat().st_mode & 0o777 == 0o755


def test_a_log_file_on_a_full_disk_says_so_once(tmp_path, capsys):
    handler = QuietFileHandler(tmp_path / "log.txt")
    logger = logging.getLogger("reidkit.test_full_disk")
    logger.propagate = False                       # this handler alone (others may hold closed test streams)
    logger.addHandler(handler)

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")
    handler.stream = FullDisk()
    try:
        for i in range(3):
            logger.warning("message %d", i)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "No space left on device" in err
    assert "Logging error" not in err and handler.failed


def test_csv_files_with_a_byte_order_mark_read_and_other_encodings_are_named(tmp_path):
    root = tmp_path / "csvdata"
    (root / "img").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 8, 3), 40 * i, np.uint8)).save(root / "img" / f"{i}.png")
    rows = "path,identity,camera\nimg/0.png,1,1\nimg/1.png,1,2\nimg/2.png,2,1\nimg/3.png,2,2\n"
    for split in ("train", "query", "gallery"):
        (root / f"{split}.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())     # Excel's "CSV UTF-8"
    assert len(build_dataset("custom", str(root)).train) == 4
    (root / "query.csv").write_bytes(rows.encode() + "img/0.png,caf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DatasetLayoutError, match=r"query.csv:6: not UTF-8 text"):
        build_dataset("custom", str(root))


def test_int8_calibration_on_a_count_that_is_not_a_multiple_of_the_batch(tmp_path):
    from reidkit.deploy.onnx_model import even_batches, quantize_onnx
    from reidkit.deploy.optimize import export_onnx
    assert [len(b) for b in even_batches([np.zeros((16, 1)), np.zeros((16, 1)), np.zeros((8, 1))])] == [20, 20]
    assert [len(b) for b in even_batches([np.zeros((7, 1))])] == [7]
    model = build_model("resnet18_bnneck", 2, pretrained="none").eval()
    path = export_onnx(model, tmp_path / "m.onnx", (32, 16))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 3, 32, 16)).astype(np.float32) for n in (16, 16, 8)]
    assert quantize_onnx(path, tmp_path / "m.int8.onnx", iter(batches), "percentile").is_file()
