import pytest

from reidkit.names import Registry, check_keywords, counted, did_you_mean, look_up


def test_counted_says_one_and_many():
    assert [counted(n, "query", "queries") for n in (0, 1, 2)] == ["0 queries", "1 query", "2 queries"]
    assert counted(1, "CPU thread") == "1 CPU thread" and counted(8, "CPU thread") == "8 CPU threads"


def test_did_you_mean_suggests_only_close_names():
    assert did_you_mean("osnet_x025", ["osnet_x0_25", "resnet50_bnneck"]) == " (did you mean 'osnet_x0_25'?)"
    assert did_you_mean("vgg16", ["osnet_x0_25", "resnet50_bnneck"]) == ""


def test_look_up_and_keyword_checks_name_what_is_wrong():
    def loader(root, seed=0):
        return root, seed

    registry = {"market1501": loader}
    assert look_up(registry, "market1501", "dataset", "reidkit datasets") is loader
    with pytest.raises(ValueError, match=r"unknown dataset 'market1502' \(did you mean 'market1501'\?\); "
                                         r"registered: market1501 \(`reidkit datasets` lists them\)"):
        look_up(registry, "market1502", "dataset", "reidkit datasets")
    check_keywords(loader, ["seed"], "dataset 'market1501'", "root")
    with pytest.raises(ValueError, match=r"does not take root, size \(it takes: seed\)"):
        check_keywords(loader, ["root", "size"], "dataset 'market1501'", "root")


def test_registry_registers_once_and_looks_up_with_suggestions():
    models: Registry = Registry("model", "reidkit models")

    @models.register("osnet_x0_25")
    def osnet(num_classes):
        """OSNet x0.25 (Zhou et al. 2019).

        More text."""
        return num_classes

    assert models["osnet_x0_25"] is osnet and "osnet_x0_25" in models and "osnet" not in models
    assert models.names() == ["osnet_x0_25"]
    assert models.describe() == [("osnet_x0_25", "OSNet x0.25 (Zhou et al. 2019).")]
    with pytest.raises(ValueError, match=r"unknown model 'osnet_x025' \(did you mean 'osnet_x0_25'\?\)"):
        models["osnet_x025"]
    with pytest.raises(ValueError, match=r"model name 'osnet_x0_25' is registered twice \((tests\.)?test_names and"):
        models.register("osnet_x0_25")(lambda num_classes: num_classes)
    assert models["osnet_x0_25"] is osnet                   # the first registration stays
