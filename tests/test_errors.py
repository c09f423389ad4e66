"""One user-error type (:class:`dfine.errors.DFineError`): the CLI (``error: …``, exit 2), the
app (a toast and one log line) and Python show the same line; anything else is a bug and keeps
its traceback — in the CLI, and in the app's server log (the toast says an internal error
happened)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dfine import errors
from dfine.cli import main
from dfine.errors import DFineError, InputFileError, InvalidArgumentError, MissingDependencyError

gr = pytest.importorskip("gradio", reason="the app needs gradio")

from app.errors import UserError, to_gr_error, user_errors  # noqa: E402
from app.tabs import detect  # noqa: E402
from app.tabs.common import quietly  # noqa: E402
from tests.app_util import SYNTH_EXAMPLE, app_state  # noqa: E402

DEMO = "assets/dfine_n_synth.safetensors"


def _user_error_kinds() -> list[type[BaseException]]:
    from dfine.data.dataset import DatasetError
    from dfine.guard import PrecisionGuardError
    from dfine.io import ImageLoadError
    from dfine.nn.decoder import NoDistributionsError
    from dfine.resources import MissingAssetError
    from dfine.train.trainer import NonFiniteLossError
    from dfine.video import VideoError
    from dfine.webapp import AppUnavailableError
    from dfine.weights import CheckpointError
    from dfine.zoo import ZooDownloadError

    return [
        CheckpointError, ImageLoadError, ZooDownloadError, VideoError, DatasetError,
        PrecisionGuardError, NoDistributionsError, MissingAssetError, AppUnavailableError,
        NonFiniteLossError, UserError,
    ]  # fmt: skip


@pytest.mark.parametrize("kind", _user_error_kinds(), ids=lambda k: k.__name__)
def test_every_user_error_is_a_dfine_error(kind):
    assert issubclass(kind, DFineError)


def test_kinds_keep_the_builtin_types_callers_catch():
    from dfine.io import ImageLoadError

    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InputFileError, FileNotFoundError)
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(ImageLoadError, ValueError)
    from dfine.backends import tensorrt
    from dfine.guard import PrecisionGuardError

    assert tensorrt.PrecisionGuardError is PrecisionGuardError  # one class of that name


def test_missing_names_the_feature_and_the_package():
    e = errors.missing("INT8 export", "nncf")
    assert isinstance(e, ImportError) and e.name == "nncf"
    assert (
        str(e) == "INT8 export needs the 'nncf' package, which is not installed: pip install nncf"
    )


def test_a_user_error_is_the_same_line_in_python_the_cli_and_the_app(tmp_path, capsys):
    """A missing checkpoint: ``str`` in Python, ``error: <it>`` and exit 2 in the CLI, the
    toast's message in the app."""
    from dfine.sources import resolve

    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(DFineError) as err:
        resolve(missing)
    line = str(err.value)
    assert "nowhere.pth" in line and "\n" not in line

    assert main(["inspect", missing]) == 2
    assert capsys.readouterr().err == f"error: {line}\n"

    with pytest.raises(gr.Error) as toast:
        user_errors(resolve)(missing)
    assert toast.value.message == line


def test_a_bug_in_a_cli_command_keeps_its_traceback(monkeypatch, capsys):
    """A ``KeyError`` (a typo in our code) is not "error: …" and exit 2: it propagates."""

    def typo(_):
        return {}["num_clases"]

    monkeypatch.setattr("dfine.sources.resolve", typo)
    with pytest.raises(KeyError, match="num_clases"):
        main(["inspect", DEMO])
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_the_cli_prints_its_traceback_and_a_user_error_does_not():
    """The same through the ``dfine`` process: Python's traceback and exit status 1 for a
    bug; one line and exit status 2 for a user's mistake."""
    code = (
        "import sys, dfine.sources as s\n"
        "s.resolve = lambda w: {}['num_clases']\n"
        "from dfine.cli import main\n"
        "sys.exit(main(['inspect', 'x.pth']))\n"
    )
    bug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "KeyError" in bug.stderr
    user = subprocess.run(
        [sys.executable, "-m", "dfine.cli", "inspect", "nowhere.pth"],
        capture_output=True,
        text=True,
    )
    assert user.returncode == 2 and "Traceback" not in user.stderr
    assert user.stderr.startswith("error: ") and user.stderr.count("\n") == 1


def test_a_non_finite_loss_keeps_exit_status_3(monkeypatch, capsys):
    from dfine.train.trainer import NonFiniteLossError

    def diverge(_):
        raise NonFiniteLossError("loss became NaN at epoch 1 step 3; lower the learning rate")

    monkeypatch.setattr("dfine.sources.resolve", diverge)
    assert main(["inspect", DEMO]) == 3
    assert capsys.readouterr().err == (
        "error: loss became NaN at epoch 1 step 3; lower the learning rate\n"
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return app_state(tmp_path_factory.mktemp("app"))


def _detect(state):
    return detect.detect(state, str(SYNTH_EXAMPLE), 0.5, 320, "default", 300, False)


def test_a_bug_in_an_app_handler_is_logged_with_its_traceback(state, monkeypatch, caplog):
    def typo(*_, **__):
        return {}["num_clases"]

    monkeypatch.setattr(detect, "detect_summary", typo)
    with caplog.at_level(logging.INFO, logger="dfine.app"), pytest.raises(gr.Error) as toast:
        _detect(state)
    assert "internal error" in toast.value.message and "KeyError" in toast.value.message
    assert toast.value.print_exception is False  # logged once, below
    [record] = [r for r in caplog.records if r.name == "dfine.app"]
    assert record.levelno == logging.ERROR and record.exc_info[0] is KeyError
    assert "Traceback (most recent call last)" in caplog.text and "num_clases" in caplog.text


def test_a_user_error_in_an_app_handler_is_one_log_line(state, monkeypatch, caplog):
    def refuse(*_, **__):
        raise InvalidArgumentError("the summary cannot be written:\n  try again")

    monkeypatch.setattr(detect, "detect_summary", refuse)
    with caplog.at_level(logging.INFO, logger="dfine.app"), pytest.raises(gr.Error) as toast:
        _detect(state)
    assert toast.value.message == "the summary cannot be written: try again"
    [record] = [r for r in caplog.records if r.name == "dfine.app"]
    assert record.exc_info is None and toast.value.message in record.getMessage()


def test_to_gr_error_names_an_internal_error_and_keeps_the_type():
    try:
        raise AttributeError("'NoneType' object has no attribute 'boxes'")
    except AttributeError as e:
        toast = to_gr_error(e)
    assert toast.title == "Internal error" and "AttributeError" in toast.message


def test_quietly_skips_a_user_error_and_logs_a_bug(caplog):
    def user(_):
        raise InvalidArgumentError("no image")

    def bug(_):
        return {}["typo"]

    with caplog.at_level(logging.INFO, logger="dfine.app"):
        quietly(user, 1)(None)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        quietly(bug, 1)(None)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info[0] is KeyError and "Traceback" in caplog.text


def test_the_model_tab_offers_no_bf16_measurement_without_openvino(state, monkeypatch):
    """A Spaces-style install (no OpenVINO): the button is disabled with one line naming the
    package, and the endpoint answers with that line instead of an internal error."""
    from app.tabs import model
    from dfine import optional

    monkeypatch.setattr(optional, "available", lambda module: module != "openvino")
    with gr.Blocks() as demo:
        button, _ = model.precision_cost_controls()
    assert button.interactive is False
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.value]
    assert notes == ["Measuring reduced precision needs `openvino`, not installed here: "
                     "`pip install openvino`."]  # fmt: skip
    with pytest.raises(gr.Error) as toast:
        model.precision_cost(state, "default")
    assert toast.value.message == (
        "Measuring f32 vs bf16 needs the 'openvino' package, which is not installed: "
        "pip install openvino"
    )

    monkeypatch.setattr(optional, "available", lambda module: True)
    with gr.Blocks():
        button, _ = model.precision_cost_controls()
    assert button.interactive is not False


def test_a_user_error_from_a_loader_worker_is_its_own_line():
    """torch re-raises a worker's error as ``type(message with the worker's traceback)``:
    Python, the CLI and the app all show the original message only."""
    from dfine.data.dataset import DatasetError

    wrapped = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\n    raise DatasetError(m)\n'
        "dfine.data.dataset.DatasetError: a.json: image id 3: file not found\n"
    )
    assert str(wrapped) == errors.error_text(wrapped) == "a.json: image id 3: file not found"
    assert to_gr_error(wrapped).message == str(wrapped)
