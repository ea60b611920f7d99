#!/usr/bin/env bash
# `make validate`: offline checks of the SAM template, no AWS account or credentials needed.
#   1. cfn-lint infra/template.yaml
#   2. sam validate --lint (the SAM transform itself, plus cfn-lint on its output)
#   3. infra/check_template.py: least privilege, triggers, dead letters, memory/arch/runtime,
#      bucket hardening, the Distributed Map backfill, outputs
#   4. the checker's self-test: every infra/tests/bad-*.yaml must be rejected, each for the
#      reason its "# expect:" line names, so the check cannot silently pass
# Tools come from the venv .venv at the repository root (created if missing; the pinned
# versions are installed only when they are not importable there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
CFN_LINT_VERSION="1.58.0"
SAM_CLI_VERSION="1.170.0"
TEMPLATE="infra/template.yaml"

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import cfnlint, samcli' >/dev/null 2>&1 ||
    [[ ! -x "$VENV/bin/sam" || ! -x "$VENV/bin/cfn-lint" ]]; then
    echo "installing cfn-lint $CFN_LINT_VERSION and aws-sam-cli $SAM_CLI_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION"
fi

# Offline: no telemetry, no credentials, no profile; a region for the SAM transform.
export SAM_CLI_TELEMETRY=0
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

echo "== cfn-lint $TEMPLATE"
"$VENV/bin/cfn-lint" "$TEMPLATE"
echo "ok"

echo "== sam validate --lint -t $TEMPLATE"
"$VENV/bin/sam" validate --lint -t "$TEMPLATE"

echo "== policy check"
"$VENV/bin/python" infra/check_template.py "$TEMPLATE"

echo "== policy check self-test (each bad template must be rejected)"
"$VENV/bin/python" infra/check_template.py --expect-fail infra/tests/bad-*.yaml
