#!/usr/bin/env bash
# Submit one job of jobs/ to a running Ray cluster, at most once per job and date.
#
#   jobs/submit.sh JOB [--date YYYY-MM-DD] [--no-wait] [-- ARGS...]
#
#   JOB        a job file under the repository (jobs/nightly_translation.yaml) or its short
#              name (nightly_translation)
#   --date     the run date (default: today, UTC). It names the submission and is passed to
#              the job as `--date`, so it also fills {date} in output.uri
#   --no-wait  submit (or find the run already going) and return at once
#   ARGS       handed to `python -m batch run`, e.g.
#              -- --input s3://corpus-raw/posts/2026-11-24/ --set engine.replicas=8
#
# What it runs on the cluster:
#
#   Ray's job API (what `ray job submit` calls) with
#       submission id  <name>-<date>
#       runtime env    {"working_dir": ".", "excludes": [...], "env_vars": {...}}
#       entry point    python -m batch run jobs/X.yaml --date <date> ARGS...
#
# Every argument arrives literally: Ray runs the entry point as one string with /bin/sh on
# the head, so the script builds that string itself, each word quoted for a POSIX shell
# (Python's shlex.join: 'it'"'"'s'), and submits it through Ray's Python client, whatever a
# `ray` CLI version would do with separate words. A value holding $(...), backticks, ;,
# quotes or spaces reaches `python -m batch run` as typed.
#
# The package travels with the submission: the working directory (this repository, less
# .gitignore'd files and the excludes below) is uploaded and is the job's current directory
# and first import path on every node, so the code that runs is the code submitted. The
# heavy dependencies (vLLM's GPU build, torch, CUDA) do not travel: they are installed on
# every node by cluster.yaml (`VLLM_SPEC=vllm==... scripts/install.sh`) or baked into the
# image on Kubernetes, and `python` on the nodes is that environment's.
#
# Credentials never travel with a submission: the runtime env, the entry point and the
# metadata are stored in the cluster's job table and shown on the dashboard. Workers get
# object-store access from their instance role (cluster.yaml: IamInstanceProfile), an IRSA
# service account (Kubernetes), or the environment of their `ray start`. This script refuses
# a runtime env or arguments that name a credential variable.
#
# One run per job and date: the submission id is <job name>-<date>, e.g.
# nightly-translation-2026-11-24. Before submitting, the script looks its attempts up:
#   SUCCEEDED          nothing is submitted; exit 0
#   PENDING / RUNNING  nothing is submitted; the script follows that run and exits with its result
#   the last attempt ended PARTIAL (job exit 2) or INVALID (job exit 3) with the same command
#                      and job file: nothing is submitted (a retry cannot help); its exit again
#   FAILED (job exit 1) / STOPPED, or the command or job file changed since
#                      a new attempt is submitted as <id>-attempt2, -attempt3, ... (up to
#                      MAX_ATTEMPTS in all); it resumes from the files the failed run committed
# Ray refuses a second submission with an existing id, so two schedulers racing on the same
# date still start one run: the loser follows the winner's.
#
# Environment:
#   RAY_ADDRESS or RAY_API_SERVER_ADDRESS  the cluster's dashboard, e.g. http://127.0.0.1:8265
#                      (on the head node, or through `ray dashboard cluster.yaml` from outside)
#   RAY_AUTH_MODE      token (set here when unset; any other value is refused). The token is read
#                      from ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN.
#   RUNTIME_ENV_JSON   replaces the default runtime env below (keep working_dir ".")
#   MAX_ATTEMPTS       attempts per job and date, default 3
#
# Exit status: the job's own (batch/outcome.py), whether the run is new or earlier:
#   0 SUCCEEDED  published
#   1 FAILED     the run failed or was STOPPED, the attempts are used up, or the cluster could
#                not be asked or did not accept the job: a later retry may help
#   2 PARTIAL    published, but some input files could not be read (the job's manifest names them)
#   3 INVALID    the job file or its arguments are wrong (the job said so, or this script's own
#                usage check): not worth retrying until they are fixed
# The last line printed says which, e.g. "submit.sh: nightly-translation-2026-11-24 SUCCEEDED".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="submit.sh"

# Exit codes, as batch/outcome.py defines them.
SUCCEEDED=0 FAILED=1 PARTIAL=2 INVALID=3

die() { local code="$1"; shift; echo "$PROG: $*" >&2; exit "$code"; }

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-$INVALID}"
}



# --- arguments ---------------------------------------------------------------------------
JOB=""
DATE=""
WAIT=1
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --date) [[ $# -ge 2 ]] || usage; DATE="$2"; shift 2 ;;
    --date=*) DATE="${1#--date=}"; shift ;;
    --no-wait) WAIT=0; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die $INVALID "unknown option $1 (arguments for the job go after --)" ;;
    *) [[ -z "$JOB" ]] || die $INVALID "one job at a time (got $JOB and $1)"; JOB="$1"; shift ;;
  esac
done
[[ -n "$JOB" ]] || usage

DATE="${DATE:-$(date -u +%F)}"
[[ "$DATE" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || die $INVALID "--date $DATE: expected YYYY-MM-DD"

# The job file must be inside the repository: it is shipped with the working directory.
if [[ "$JOB" != */* && "$JOB" != *.yaml && "$JOB" != *.yml ]]; then
  JOB="jobs/$JOB.yaml"
fi
if [[ "$JOB" = /* ]]; then JOB_PATH="$JOB"; elif [[ -e "$JOB" ]]; then JOB_PATH="$PWD/$JOB"; else JOB_PATH="$REPO/$JOB"; fi
[[ -f "$JOB_PATH" ]] || die $INVALID "$JOB: no such job file"
JOB_PATH="$(cd "$(dirname "$JOB_PATH")" && pwd)/$(basename "$JOB_PATH")"
case "$JOB_PATH" in
  "$REPO"/*) JOB_REL="${JOB_PATH#"$REPO"/}" ;;
  *) die $INVALID "$JOB: the job file must be inside $REPO (it travels with the working directory)" ;;
esac

NAME="$(sed -n "s/^name:[[:space:]]*[\"']\{0,1\}\([A-Za-z0-9][A-Za-z0-9_.-]*\).*/\1/p" "$JOB_PATH" | head -n 1)"
[[ -n "$NAME" ]] || die $INVALID "$JOB_REL: no top-level 'name:' to name the submission after"
BASE_ID="$NAME-$DATE"

# --- cluster, authentication, runtime env ------------------------------------------------
ADDRESS="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-}}"
[[ -n "$ADDRESS" ]] || die $INVALID "set RAY_ADDRESS to the cluster's dashboard, e.g. http://127.0.0.1:8265 (ray dashboard cluster.yaml)"

if [[ -n "${RAY_AUTH_MODE:-}" && "${RAY_AUTH_MODE}" != "token" ]]; then
  die $INVALID "RAY_AUTH_MODE=$RAY_AUTH_MODE: the clusters run with token authentication; unset it or set it to token"
fi
export RAY_AUTH_MODE=token

RUNTIME_ENV_JSON="${RUNTIME_ENV_JSON:-$(cat <<'JSON'
{"working_dir": ".",
 "excludes": [".git", ".venv", "tests", "out", ".demo", ".pytest_cache", "*.egg-info", "__pycache__"],
 "env_vars": {"PYTHONUNBUFFERED": "1"}}
JSON
)}"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-3}"
[[ "$MAX_ATTEMPTS" =~ ^[1-9][0-9]*$ ]] || die $INVALID "MAX_ATTEMPTS=$MAX_ATTEMPTS: expected a positive number"

for secret in AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ACCESS_KEY_ID HF_TOKEN HUGGING_FACE_HUB_TOKEN RAY_AUTH_TOKEN; do
  if grep -q "$secret" <<<"$RUNTIME_ENV_JSON ${EXTRA[*]:-}"; then
    die $INVALID "$secret in the runtime env or job arguments: credentials never go into a submission (the job table and the dashboard show them); workers take them from their instance role, service account or environment"
  fi
done

command -v ray >/dev/null 2>&1 || die $INVALID "the ray CLI is not on PATH (scripts/install.sh, then .venv/bin)"
RAY_BIN="$(command -v ray)"
PYTHON="${PYTHON:-$(dirname "$RAY_BIN")/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

# The job's command, word by word: `ask` quotes it into the entry point (shlex.join).
JOB_WORDS=(python -m batch run "$JOB_REL" --date "$DATE" ${EXTRA[@]+"${EXTRA[@]}"})
JOB_SHA="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$JOB_PATH")"

# `ask list BASE`: "<attempt> <submission id> <status> <exit> <same>" for every attempt of
# BASE, oldest first: <exit> the job's exit code ("-" while it runs or when unknown), <same> 1
# when that attempt ran this very entry point and job file.
# `ask status ID`: "<status> <exit>" of ID, or NOT_FOUND.
# `ask submit ID`: submit the job's command as ID (RUNTIME_ENV_JSON, METADATA).
# Exit 1 when the cluster cannot be asked or refuses.
ask() {
  RUNTIME_ENV_JSON="$RUNTIME_ENV_JSON" METADATA="${METADATA:-}" JOB_SHA="$JOB_SHA" \
    "$PYTHON" - "$ADDRESS" "$@" "${JOB_WORDS[@]}" <<'PY'
import json
import os
import re
import shlex
import sys
import time

address, mode, key, *words = sys.argv[1:]
entrypoint = shlex.join(words)  # POSIX quoting of every word: /bin/sh on the head runs it


def ask_cluster():
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    if mode == "submit":
        runtime_env = json.loads(os.environ["RUNTIME_ENV_JSON"])
        metadata = json.loads(os.environ["METADATA"])
        return client.submit_job(entrypoint=entrypoint, submission_id=key, runtime_env=runtime_env, metadata=metadata)
    return client.list_jobs()


for attempt in range(1, 4):
    try:
        jobs = ask_cluster()
        break
    except ConnectionError as exc:  # a dashboard busy or restarting: ask again, briefly
        if attempt == 3:
            print(f"the cluster at {address} did not answer {mode}: {exc}", file=sys.stderr)
            sys.exit(1)
        time.sleep(3 * attempt)
    except Exception as exc:  # unauthorized, not a Ray dashboard, id taken
        print(f"the cluster at {address} did not answer {mode}: {exc}", file=sys.stderr)
        sys.exit(1)
if mode == "submit":
    sys.exit(0)


def status(job):
    return getattr(job.status, "value", str(job.status))


def exit_code(job):
    code = getattr(job, "driver_exit_code", None)
    return "-" if code is None else str(code)


def same_command(job):
    metadata = job.metadata or {}
    return int(job.entrypoint == entrypoint and metadata.get("job_sha256") == os.environ["JOB_SHA"])


if mode == "status":
    job = next((job for job in jobs if job.submission_id == key), None)
    print("NOT_FOUND -" if job is None else f"{status(job)} {exit_code(job)}")
else:
    pattern = re.compile(re.escape(key) + r"(?:-attempt([0-9]+))?")
    found = sorted(
        (int(match.group(1) or 1), job.submission_id, status(job), exit_code(job), same_command(job))
        for job in jobs
        if job.submission_id and (match := pattern.fullmatch(job.submission_id))
    )
    for row in found:
        print(*row)
PY
}

# What an ended run means for the scheduler: "<verdict> <exit status>".
verdict() {
  local state="$1" code="$2"
  case "$state:$code" in
    SUCCEEDED:*) echo "SUCCEEDED $SUCCEEDED" ;;
    FAILED:2) echo "PARTIAL $PARTIAL" ;;
    FAILED:3) echo "INVALID $INVALID" ;;
    *) echo "$state $FAILED" ;;
  esac
}

# Follow a run until it ends; exit with its result.
follow() {
  local id="$1" answer state code word status
  while :; do
    if [[ "$WAIT" == 1 ]]; then
      ray job logs --address "$ADDRESS" --follow --log-style record "$id" || true
    fi
    answer="$(ask status "$id")" || die $FAILED "cannot ask the cluster for $id"
    read -r state code <<<"$answer"
    case "$state" in
      SUCCEEDED|FAILED|STOPPED)
        read -r word status <<<"$(verdict "$state" "$code")"
        if [[ "$word" == SUCCEEDED ]]; then echo "$PROG: $id SUCCEEDED"; else echo "$PROG: $id $word (ray job logs $id)"; fi
        exit "$status" ;;
      PENDING|RUNNING)
        if [[ "$WAIT" == 0 ]]; then echo "$PROG: $id $state (ray job logs --follow $id)"; exit $SUCCEEDED; fi
        sleep 5 ;;  # the log stream ended early (a dropped connection): follow again
      *) die $FAILED "$id: unexpected status ${state:-(none)}" ;;
    esac
  done
}

# --- one run per job and date ------------------------------------------------------------
cd "$REPO"
ATTEMPTS="$(ask list "$BASE_ID")" || die $FAILED "cannot reach the cluster at $ADDRESS"
tried=0
last_attempt=0
last=""
while read -r attempt id state code same; do
  [[ -n "${attempt:-}" ]] || continue
  tried=$((tried + 1))
  last_attempt="$attempt"
  last="$id $state $code $same"
  case "$state" in
    SUCCEEDED)
      echo "$PROG: $id already SUCCEEDED; not submitting again"
      echo "$PROG: $id SUCCEEDED"
      exit $SUCCEEDED ;;
    PENDING|RUNNING)
      echo "$PROG: $id is already $state; not submitting a second copy"
      follow "$id" </dev/null ;;
  esac
done <<<"$ATTEMPTS"

# A partial publish or an invalid job ends the same way however often it runs again: the
# same command and job file are not resubmitted; a changed one is a new attempt.
if [[ -n "$last" ]]; then
  read -r id state code same <<<"$last"
  read -r word status <<<"$(verdict "$state" "$code")"
  if [[ "$same" == 1 && ( "$word" == PARTIAL || "$word" == INVALID ) ]]; then
    echo "$PROG: $id ended $word (job exit $code) with this same command and job file; a retry cannot change that, not submitting again: see ray job logs $id"
    echo "$PROG: $id $word"
    exit "$status"
  fi
fi

if (( tried >= MAX_ATTEMPTS )); then
  echo "$PROG: $BASE_ID failed $tried times (MAX_ATTEMPTS=$MAX_ATTEMPTS); not retrying: see ray job logs $BASE_ID"
  echo "$PROG: $BASE_ID FAILED"
  exit $FAILED
fi
if (( tried == 0 )); then ID="$BASE_ID"; else ID="$BASE_ID-attempt$((last_attempt + 1))"; fi

METADATA="{\"job\": \"$NAME\", \"date\": \"$DATE\", \"attempt\": \"$((tried + 1))\", \"job_file\": \"$JOB_REL\", \"job_sha256\": \"$JOB_SHA\"}"
echo "$PROG: submitting $JOB_REL for $DATE as $ID to $ADDRESS"
if ! ask submit "$ID"; then
  # Another scheduler may have submitted the same id a moment earlier: then follow that run.
  answer="$(ask status "$ID")" || die $FAILED "cannot reach the cluster at $ADDRESS"
  read -r state code <<<"$answer"
  [[ "$state" != NOT_FOUND ]] || die $FAILED "the cluster did not accept $ID"
  echo "$PROG: $ID was submitted by someone else a moment ago ($state); following it"
fi
follow "$ID"
