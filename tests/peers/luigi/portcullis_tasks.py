"""Tiny Luigi tasks for the Portcullis Luigi peer: a two-task chain writing into LUIGI_OUT (a directory).

  LUIGI_OUT=/tmp/x .venv/bin/luigi --module portcullis_tasks Report --day 2024-01-01 \
      --scheduler-url http://127.0.0.1:PORT/ --workers 1
(run from this directory, or with it on PYTHONPATH). Use a fresh LUIGI_OUT (or another --day) to make
the tasks run again: Luigi skips tasks whose output exists.
"""

import os

import luigi

# LUIGI_SCHEDULER_BEARER: scheduler RPCs carry `Authorization: Bearer <it>` (see portcullis_bearer.py).
import portcullis_bearer  # noqa: F401, E402


class Extract(luigi.Task):
    day = luigi.DateParameter()

    def output(self):
        return luigi.LocalTarget(os.path.join(os.environ["LUIGI_OUT"], f"extract-{self.day}.txt"))

    def run(self):
        with self.output().open("w") as f:
            f.write("extracted\n")


class Report(luigi.Task):
    day = luigi.DateParameter()

    def requires(self):
        return Extract(day=self.day)

    def output(self):
        return luigi.LocalTarget(os.path.join(os.environ["LUIGI_OUT"], f"report-{self.day}.txt"))

    def run(self):
        self.set_status_message("reporting")
        self.set_progress_percentage(50)
        with self.input().open() as i, self.output().open("w") as o:
            o.write(i.read() + "reported\n")


class Slow(luigi.Task):
    """Runs `seconds` long (the worker pings the scheduler meanwhile); no output, so it always runs."""

    seconds = luigi.FloatParameter(default=3.0)

    def complete(self):
        return getattr(self, "_done", False)

    def run(self):
        import time

        time.sleep(self.seconds)
        self._done = True


class Boom(luigi.Task):
    """Always fails: the worker reports FAILED with the traceback as `expl`."""

    def run(self):
        raise RuntimeError("boom (portcullis test)")
