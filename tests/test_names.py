import pytest

from reidkit.names import check_keywords, counted, did_you_mean, look_up


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
