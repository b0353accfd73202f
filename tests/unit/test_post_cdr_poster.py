"""The stand-in's CDR poster (templates/sipp/post-cdr.py.j2) as rendered for a lab node, loaded as a
module: its posting pool answers every post of a batch, whatever a post does. The real SIPp,
receivers, restarts and rotation are tests/daemons/test_sipp_uas_cdr.py's."""
from __future__ import annotations

import importlib.util
import threading

import pytest

from components.render import RenderContext, masked_secrets, sipp_uas
from tests.helpers import shipped_cluster


@pytest.fixture
def poster_module(tmp_path):
    c = shipped_cluster("lab")
    path = tmp_path / "post_cdr.py"
    path.write_text(sipp_uas.post_cdr_text(RenderContext(c, c.nodes[0], masked_secrets()), state_dir=str(tmp_path)))
    spec = importlib.util.spec_from_file_location("post_cdr_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # defines only: its main runs under __main__
    return module


class Scripted:
    """A receiver whose posts answer from a script: a status, None (no answer) or an exception."""

    def __init__(self, answers):
        self.url, self.answers, self.posted, self.lock = "http://scripted/cdr", list(answers), [], threading.Lock()

    def post(self, body):
        with self.lock:
            self.posted.append(body)
            answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer

    def drop(self):
        pass


def test_an_unforeseen_error_in_a_post_leaves_it_not_taken_and_the_batch_answered(poster_module, capsys):
    pool = poster_module.Poster()
    receiver = Scripted([ValueError("broken"), 200, 200])
    statuses = pool.post_all(receiver, [b"a"])       # one share, its post raises: None, not a hang
    assert statuses == [None]
    assert "posting to http://scripted/cdr failed: ValueError: broken" in capsys.readouterr().err
    assert pool.post_all(receiver, [b"b", b"c"]) == [200, 200]   # the worker thread is still there


def test_a_receiver_with_no_answer_is_skipped_for_the_rest_of_its_batch(poster_module):
    pool = poster_module.Poster()
    n = poster_module.PARALLEL
    receiver = Scripted([])
    receiver.post = lambda body: (receiver.posted.append(body), None if body == b"0" else 200)[1]
    bodies = [str(i).encode() for i in range(3 * n)]
    statuses = pool.post_all(receiver, bodies)
    # the first worker's share is bodies 0, n, 2n: after 0 got no answer, the other two are not posted
    assert [statuses[0], statuses[n], statuses[2 * n]] == [None, None, None]
    assert str(n).encode() not in receiver.posted and str(2 * n).encode() not in receiver.posted
    assert all(s in (None, 200) for s in statuses) and len(receiver.posted) <= len(bodies) - 2
    assert pool.post_all(receiver, [b"next"]) == [200]   # a new batch tries it again
