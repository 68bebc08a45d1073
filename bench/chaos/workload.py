"""The chaos workload: a table of parts, each one kind of submission, drawn from a seeded
generator.

A part is a `Part(name, weight, make, needs)`: `make(gen)` returns one `Submission` (one
`batchctl submit` call, on its command line or as a `--from` file) of `JobPlan`s; `needs`
names a feature the part waits for (`agents`, `push`): a part whose feature this batchd does
not have (detected at the start, see bench.chaos.features) is skipped with a printed note,
and switches itself on when the feature lands. Every plan says what the job does (lines,
big lines, sleeps, exit code) so the checker knows what its output and its end must be.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos import jobprog
from bench.chaos.jobprog import line_bytes
from bench.chaos.rig import PY, REPOS
from supervisor.state.clock import iso_now

__all__ = ["AGENT_ADAPTORS", "PARTS", "PUSHED_FILE", "Gen", "JobPlan", "Part", "Submission",
           "expected"]

JOBPROG = str(jobprog.__file__)
#: What a --push job adds to its workspace: `<PUSHED_FILE><job id>.txt`, holding its id.
PUSHED_FILE = "chaos-pushed-"

#: The agent CLIs with an adaptor and a strict fake (tests/fakes/fake_<name>.py).
AGENT_ADAPTORS = ("claude", "gemini", "codex", "aider", "opencode", "q")


@dataclass
class JobPlan:
    """One job the workload submits, and what it will do."""

    id: str
    part: str
    agent: str = "shell"
    repos: tuple[str, ...] = ()
    exclusive: bool = False
    lines: int = 1
    sleep: float = 0.0
    big: tuple[int, ...] = ()
    exit_code: int = 0
    timeout: float | None = None
    callback: str | None = None
    batch: str | None = None
    after: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()
    priority: int = 0
    delay: float | None = None
    retries: int = 0
    push: bool = False
    text: str = ""           # an agent job's prompt

    @property
    def shell(self) -> bool:
        return self.agent == "shell"

    @property
    def duration(self) -> float:
        return self.lines * self.sleep

    def prompt(self, markers: str) -> str:
        if not self.shell:
            return self.text
        big = ",".join(str(n) for n in self.big) or "-"
        # A --push job changes its workspace (one file named by its id, holding it), so
        # there is a commit to push and a check of what reached the remote.
        change = (f'echo "$BATCHD_JOB_ID" > "{PUSHED_FILE}$BATCHD_JOB_ID.txt" && '
                  if self.push else "")
        return (f"{change}'{PY}' -S '{JOBPROG}' '{markers}' {self.lines} {self.sleep:g} "
                f"{big} {self.exit_code}")

    def whole_run(self, repo: str) -> bool:
        """Whether this job holds `repo`'s lock for its whole run."""
        return repo in self.repos and (REPOS[repo] or self.exclusive)

    def cli(self, markers: str) -> list[str]:
        """`batchctl submit` arguments for this job alone."""
        args = ["submit", "--agent", self.agent, "--id", self.id,
                "--prompt", self.prompt(markers)]
        for repo in self.repos:
            args += ["--repo", repo]
        if self.exclusive:
            args.append("--exclusive")
        if self.timeout is not None:
            args += ["--timeout", f"{self.timeout:g}s"]
        if self.callback:
            args += ["--callback", self.callback]
        if self.batch:
            args += ["--batch", self.batch]
        if self.after:
            args += ["--after", ",".join(self.after)]
        if self.after_any:
            args += ["--after-any", ",".join(self.after_any)]
        if self.priority:
            args += ["--priority", str(self.priority)]
        if self.delay is not None:
            args += ["--delay", f"{self.delay:g}s"]
        if self.retries:
            args += ["--retries", str(self.retries)]
        if self.push:
            args.append("--push")
        return args

    def line(self, markers: str, now: float) -> dict[str, Any]:
        """This job as one line of a `--from` file."""
        obj: dict[str, Any] = {"id": self.id, "agent": self.agent,
                               "prompt": self.prompt(markers), "repos": list(self.repos)}
        if self.exclusive:
            obj["exclusive"] = True
        if self.timeout is not None:
            obj["timeout"] = self.timeout
        for key in ("callback", "batch"):
            if getattr(self, key):
                obj[key] = getattr(self, key)
        if self.after:
            obj["after"] = list(self.after)
        if self.after_any:
            obj["after_any"] = list(self.after_any)
        if self.priority:
            obj["priority"] = self.priority
        if self.delay is not None:
            obj["not_before"] = iso_now(now + self.delay)
        if self.retries:
            obj["retries"] = self.retries
        if self.push:
            obj["push"] = True
        return obj


def expected(plan: JobPlan, job_id: str) -> bytes:
    """The whole output of a completed shell job `job_id` run from `plan`."""
    return b"".join(line_bytes(job_id, n, n in plan.big) for n in range(1, plan.lines + 1))


@dataclass
class Submission:
    """One `batchctl submit`: on the command line (one job) or a `--from` file."""

    part: str
    plans: list[JobPlan]
    from_file: bool

    def argv_and_stdin(self, markers: str, now: float) -> tuple[list[str], bytes | None]:
        if not self.from_file:
            [plan] = self.plans
            return plan.cli(markers), None
        text = "".join(json.dumps(p.line(markers, now)) + "\n" for p in self.plans)
        return ["submit", "--from", "-"], text.encode()


@dataclass
class Gen:
    """What parts draw from: the seeded generator, fresh ids, the callback URLs, the
    acknowledged jobs so far (for `--after` across submissions), the features."""

    rng: random.Random
    tag: str
    urls: tuple[str, ...]
    features: frozenset[str]
    acked: list[str] = field(default_factory=list)
    n: int = 0
    batches: int = 0

    def id(self) -> str:
        self.n += 1
        return f"{self.tag}-{self.n:06d}"

    def batch(self) -> str:
        self.batches += 1
        return f"{self.tag}-b{self.batches:04d}"

    def maybe_callback(self, p: float = 0.25) -> str | None:
        return self.rng.choice(self.urls) if self.rng.random() < p else None

    def shell(self, part: str, *, lines: tuple[int, int] = (1, 30),
              sleep: tuple[float, float] = (0.0, 0.02), big: float = 0.0,
              **kw: Any) -> JobPlan:
        """A shell job printing numbered lines; `big`: the chance it has lines over 64 KiB."""
        r = self.rng
        n = r.randint(*lines)
        bigs: tuple[int, ...] = ()
        if r.random() < big:
            bigs = tuple(sorted(r.sample(range(1, n + 1), min(n, r.randint(1, 3)))))
        kw.setdefault("callback", self.maybe_callback())
        return JobPlan(id=self.id(), part=part, lines=n,
                       sleep=round(r.uniform(*sleep), 3), big=bigs, **kw)


# -- the parts ----------------------------------------------------------------------------------

def _short(g: Gen) -> Submission:
    k = g.rng.randint(1, 6)
    return Submission("short", [g.shell("short", big=0.05) for _ in range(k)], k > 1)


def _long(g: Gen) -> Submission:
    return Submission("long", [g.shell("long", lines=(40, 150), sleep=(0.02, 0.06),
                                       big=0.2)], g.rng.random() < 0.5)


def _big(g: Gen) -> Submission:
    return Submission("big_lines", [g.shell("big_lines", lines=(2, 12), sleep=(0.0, 0.1),
                                            big=1.0)], g.rng.random() < 0.5)


def _failing(g: Gen) -> Submission:
    plan = g.shell("failing", lines=(1, 10), exit_code=g.rng.choice((1, 3, 42)),
                   retries=g.rng.choice((0, 0, 1, 2)))
    return Submission("failing", [plan], g.rng.random() < 0.5)


def _timeout(g: Gen) -> Submission:
    r = g.rng
    if r.random() < 0.5:    # runs ~4 s, timeout 1-1.5 s: timed_out
        plan = g.shell("timeout", lines=(80, 80), sleep=(0.05, 0.05),
                       timeout=round(r.uniform(1.0, 1.5), 2))
    else:                   # a generous timeout that never fires
        plan = g.shell("timeout", lines=(5, 20), sleep=(0.0, 0.02), timeout=120.0)
    return Submission("timeout", [plan], r.random() < 0.5)


def _repo_jobs(g: Gen, part: str, choices: list[tuple[str, ...]], *,
               exclusive: bool = False) -> Submission:
    r = g.rng
    k = r.randint(1, 3)
    plans = [g.shell(part, lines=(5, 40), sleep=(0.0, 0.04), big=0.05,
                     repos=r.choice(choices), exclusive=exclusive) for _ in range(k)]
    return Submission(part, plans, k > 1 or r.random() < 0.5)


def _exclusive_repo(g: Gen) -> Submission:
    return _repo_jobs(g, "exclusive_repo", [("ex1",), ("ex2",)])


def _shared_repo(g: Gen) -> Submission:
    return _repo_jobs(g, "shared_repo", [("sh1",), ("sh2",)])


def _two_repos(g: Gen) -> Submission:
    return _repo_jobs(g, "two_repos", [("ex1", "sh1"), ("sh1", "sh2"), ("ex1", "ex2"),
                                       ("ex2", "sh2")])


def _exclusive_flag(g: Gen) -> Submission:
    return _repo_jobs(g, "exclusive_flag", [("sh1",), ("sh2",), ("sh1", "sh2")],
                      exclusive=True)


def _batch(g: Gen) -> Submission:
    r = g.rng
    name = g.batch()
    plans = []
    for _ in range(r.randint(2, 6)):
        repos = r.choice(((), (), (), ("sh1",), ("ex2",)))
        plans.append(g.shell("batch", lines=(1, 30), sleep=(0.0, 0.03), batch=name,
                             repos=repos, callback=r.choice(g.urls) if r.random() < 0.8
                             else None, exit_code=0 if r.random() < 0.85 else 1))
    return Submission("batch", plans, True)


def _callback(g: Gen) -> Submission:
    plan = g.shell("callback", lines=(1, 20), callback=g.rng.choice(g.urls),
                   exit_code=0 if g.rng.random() < 0.8 else 2)
    return Submission("callback", [plan], g.rng.random() < 0.5)


def _chain(g: Gen) -> Submission:
    """A chain (and sometimes a fan-in with --after-any) in one --from file."""
    r = g.rng
    plans: list[JobPlan] = []
    for i in range(r.randint(2, 4)):
        after = (plans[-1].id,) if plans else ()
        plans.append(g.shell("chain", lines=(1, 15), sleep=(0.0, 0.03), after=after,
                             exit_code=1 if i == 0 and r.random() < 0.25 else 0))
    if r.random() < 0.4:
        plans.append(g.shell("chain", lines=(1, 5), after_any=tuple(p.id for p in plans)))
    return Submission("chain", plans, True)


def _chain_split(g: Gen) -> Submission | None:
    """A job `--after` one acknowledged earlier (finished or not), its own submission."""
    if not g.acked:
        return None
    dep = g.rng.choice(g.acked[-50:])
    key = "after" if g.rng.random() < 0.7 else "after_any"
    plan = g.shell("chain_split", lines=(1, 10), **{key: (dep,)})
    return Submission("chain_split", [plan], g.rng.random() < 0.5)


def _priority_delay(g: Gen) -> Submission:
    r = g.rng
    plans = [g.shell("priority_delay", lines=(1, 10), priority=r.randint(-5, 5),
                     delay=round(r.uniform(0.2, 3.0), 2) if r.random() < 0.5 else None)
             for _ in range(r.randint(1, 4))]
    return Submission("priority_delay", plans, len(plans) > 1 or r.random() < 0.5)


def _retries(g: Gen) -> Submission:
    r = g.rng
    plan = g.shell("retries", lines=(20, 100), sleep=(0.02, 0.05), retries=r.randint(1, 3),
                   exit_code=0 if r.random() < 0.7 else 5)
    return Submission("retries", [plan], r.random() < 0.5)


def _agents(g: Gen) -> Submission:
    """A fake-agent job through one adaptor (tests/fakes: the strict fakes)."""
    r = g.rng
    name = r.choice(AGENT_ADAPTORS)
    plan = JobPlan(id=g.id(), part="agents", agent=f"fake-{name}",
                   text=f"chaos prompt {g.n}: say hello", callback=g.maybe_callback())
    return Submission("agents", [plan], r.random() < 0.5)


def _push(g: Gen) -> Submission:
    """A shell job on a shared repository with `--push` (results)."""
    plan = g.shell("push", lines=(1, 10), repos=(g.rng.choice(("sh1", "sh2")),), push=True)
    return Submission("push", [plan], g.rng.random() < 0.5)


@dataclass(frozen=True)
class Part:
    """One entry of the workload: a kind of submission, how often, what it needs."""

    name: str
    weight: int
    make: Callable[[Gen], Submission | None]
    needs: str | None = None


#: The workload. To add a kind of job when its feature lands: one entry, with `needs`
#: naming the feature (bench.chaos.features detects it; until then it is skipped, noted).
PARTS: tuple[Part, ...] = (
    Part("short", 18, _short),
    Part("long", 7, _long),
    Part("big_lines", 4, _big),
    Part("failing", 4, _failing),
    Part("timeout", 3, _timeout),
    Part("exclusive_repo", 6, _exclusive_repo),
    Part("shared_repo", 5, _shared_repo),
    Part("two_repos", 4, _two_repos),
    Part("exclusive_flag", 3, _exclusive_flag),
    Part("batch", 5, _batch),
    Part("callback", 5, _callback),
    Part("chain", 4, _chain),
    Part("chain_split", 2, _chain_split),
    Part("priority_delay", 3, _priority_delay),
    Part("retries", 3, _retries),
    Part("agents", 6, _agents, needs="agents"),      # fake-agent jobs: branch `agents`
    Part("push", 3, _push, needs="push"),            # --push: results
)
