import io

from tqdm import tqdm

from reidkit.logs import TRAINING_BAR, bar_disabled, training_postfix


def test_the_training_bar_fits_80_columns():
    postfix = training_postfix({"id": 6.5432, "triplet": 0.3123, "total": 123.4567}, 3.5e-4, 45.3)
    assert postfix == "loss 123.457 lr 3.5e-04 45 img/s"
    line = tqdm.format_meter(57, 113, 12.5, ncols=80, prefix="epoch 117/120", postfix=postfix,
                             bar_format=TRAINING_BAR)
    assert len(line) <= 80 and line.endswith(f"57/113 [00:12<00:12, {postfix}]")


def test_no_bar_frames_when_the_output_is_not_a_terminal():
    out = io.StringIO()                                  # not a tty, as a log file or CI
    for _ in tqdm(range(5), file=out, disable=bar_disabled(True)):
        pass
    assert out.getvalue() == ""
    assert bar_disabled(False) is True
