#!/usr/bin/env python3
"""Policy check of infra/template.yaml: the rules cfn-lint and `sam validate` do not know.

    python infra/check_template.py [TEMPLATE]              exit 1 and list the violations
    python infra/check_template.py --expect-fail FILE...   exit 1 unless every FILE is rejected
                                                           with the message its "# expect:" line names

Rules (each violation is printed as "<template>: <resource>: <what>"):

- IAM: no Allow statement grants "*", "s3:*" or any other wildcard S3 action; no S3 action on
  Resource "*" or on a wildcard bucket (arn:aws:s3:::*); object ARNs end in "<bucket>/<prefix>*"
  with a non-empty prefix, and every parameter used as a prefix has an AllowedPattern that
  refuses "" and "*"; Secrets Manager / SSM reads only on ARNs given as parameters; no SAM S3
  policy templates or S3 managed policies. Both branches of every Fn::If are checked.
- Checkpoints: objects under _sluice/checkpoints/<crate>/ only for the function built from
  <crate>; the whole _sluice/checkpoints/ only read (s3:GetObject, the sweep).
- Functions: Runtime provided.al2023, Architectures [arm64], MemorySize 256 or a parameter whose
  default is 256, a Timeout, BuildMethod rust-cargolambda with a BuildProperties.Binary that is a
  crate under functions/ (and every crate there has a function), JSON logs.
- Triggers: every function has Events (ScheduleV2 with an Input, S3 / EventBridgeRule filtered by
  a prefix), unless its Metadata has a non-empty "SluiceNoTriggerReason".
- Dead letters: every function has EventInvokeConfig with MaximumRetryAttempts,
  MaximumEventAgeInSeconds and an OnFailure destination (or a DeadLetterQueue); every schedule
  and rule event has a DeadLetterConfig and a RetryPolicy.
- Bucket: block public access (all four), default encryption, AbortIncompleteMultipartUpload
  after 1 day, and a bucket policy denying aws:SecureTransport false.
- Backfill: a state machine with a Distributed Map (ItemReader s3:listObjectsV2, MaxConcurrency,
  ToleratedFailurePercentage) invoking transform-s3, its definition valid against cfn-lint's
  Amazon States Language schema, and a role allowed lambda:InvokeFunction on that function only
  and states:StartExecution.
- Continue loops (a Choice on status "continue", at the top of a state machine or in a Map's
  item processor): every task invoking the function retries Lambda's transient errors, killed
  invocations (Sandbox.Timedout, Runtime.ExitError, Runtime.OutOfMemory) and Retryable, and has
  a Catch whose ResultPath keeps the event (the checkpoint it names); a task sends the abort
  event; a function whose events opt in (transform-s3) gets "continuable": true; the function
  may Get/Put/Delete under _sluice/checkpoints/<crate>/ and delete objects outside _sluice/ (a
  partitioned job given up deletes the objects it completed); the role invokes only that
  function.
- Outputs: every function's ARN, the bucket, the queue and every state machine.

The YAML is read with cfn-lint's own loader (cfnlint.decode), so !Ref, !Sub, !If parse.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = "provided.al2023"
ARCHITECTURES = ["arm64"]
MEMORY_MB = 256
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
SCHEDULE_EVENTS = ("ScheduleV2", "Schedule")
ASYNC_EVENTS = ("ScheduleV2", "Schedule", "EventBridgeRule", "CloudWatchEvent")
SECRET_ACTIONS = ("secretsmanager:getsecretvalue", "ssm:getparameter", "ssm:getparameters")
CHECKPOINTS = "_sluice/checkpoints/"
CHECKPOINT_NAMES = {"s3:getobject": "s3:GetObject", "s3:putobject": "s3:PutObject", "s3:deleteobject": "s3:DeleteObject"}
CHECKPOINT_ACTIONS = set(CHECKPOINT_NAMES)
# Read-only actions allowed on the whole reserved prefix (sweep-uploads keeps the uploads the
# checkpoints name).
CHECKPOINT_READ_ACTIONS = {"s3:getobject"}
LAMBDA_TRANSIENT = {"Lambda.ServiceException", "Lambda.TooManyRequestsException"}
KILLED = {"Sandbox.Timedout", "Runtime.ExitError", "Runtime.OutOfMemory"}
# Functions that continue only when their first event says "continuable": true.
OPT_IN_CONTINUABLE = {"transform-s3"}


def plain(value: Any) -> Any:
    """cfn-lint's decoded nodes (dict_node, str_node, ...) as plain Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def branches(value: Any) -> Iterator[Any]:
    """Every value an Fn::If may take (both branches, recursively); AWS::NoValue dropped."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, yes, no = value["Fn::If"]
        yield from branches(yes)
        yield from branches(no)
    elif value == {"Ref": "AWS::NoValue"}:
        return
    else:
        yield value


def as_list(value: Any) -> list[Any]:
    out: list[Any] = []
    for v in branches(value):
        if isinstance(v, list):
            for item in v:
                out.extend(branches(item))
        else:
            out.append(v)
    return out


def text_of(value: Any) -> str:
    """A resource or string as text: Fn::Sub strings as written, Ref/GetAtt as ${Name}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            return sub if isinstance(sub, str) else str(sub[0])
        if "Ref" in value:
            return "${%s}" % value["Ref"]
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return "${%s}" % (".".join(att) if isinstance(att, list) else att)
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(text_of(p) for p in parts)
    return json.dumps(value)


class Checker:
    def __init__(self, path: Path):
        self.path = path
        self.errors: list[str] = []
        template, matches = decode(str(path))
        if template is None:
            raise SystemExit(f"{path}: cannot parse: {matches}")
        self.t = plain(template)
        self.params: dict[str, Any] = self.t.get("Parameters", {}) or {}
        self.resources: dict[str, Any] = self.t.get("Resources", {}) or {}
        self.globals_fn: dict[str, Any] = (self.t.get("Globals", {}) or {}).get("Function", {}) or {}

    def fail(self, where: str, what: str) -> None:
        self.errors.append(f"{self.path}: {where}: {what}")

    # ------------------------------------------------------------------ IAM
    def statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, statement) for every IAM policy statement of the template."""
        for name, res in self.resources.items():
            props = res.get("Properties", {}) or {}
            rtype = res.get("Type")
            docs: list[Any] = []
            if rtype in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
                for policy in as_list(props.get("Policies", [])):
                    if isinstance(policy, str):
                        self.check_named_policy(name, policy)
                    elif isinstance(policy, dict) and "Statement" in policy:
                        docs.append(policy)
                    elif isinstance(policy, dict):
                        for template_name in policy:
                            self.check_named_policy(name, template_name)
            elif rtype == "AWS::IAM::Role":
                docs += [p.get("PolicyDocument", {}) for p in as_list(props.get("Policies", []))]
                for arn in as_list(props.get("ManagedPolicyArns", [])):
                    self.check_named_policy(name, text_of(arn))
            elif rtype in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                docs.append(props.get("PolicyDocument", {}))
            for doc in docs:
                for doc_branch in branches(doc):
                    for st in as_list(doc_branch.get("Statement", [])):
                        if isinstance(st, dict):
                            yield name, st

    def check_named_policy(self, where: str, policy: str) -> None:
        if re.search(r"S3|FullAccess|AdministratorAccess|PowerUser", policy):
            self.fail(where, f"policy {policy!r} grants more than the function's prefixes (S3 policy templates and broad managed policies are not allowed)")

    def check_iam(self) -> None:
        for where, st in self.statements():
            if st.get("Effect") != "Allow":
                continue
            sid = st.get("Sid", "?")
            if "NotAction" in st or "NotResource" in st:
                self.fail(where, f"statement {sid}: NotAction/NotResource in an Allow statement")
            actions = [text_of(a).lower() for a in as_list(st.get("Action", []))]
            resources = as_list(st.get("Resource", []))
            for a in actions:
                if a == "*":
                    self.fail(where, f"statement {sid}: grants action *")
                elif a == "s3:*":
                    self.fail(where, f"statement {sid}: grants s3:*")
                elif a.startswith("s3:") and "*" in a:
                    self.fail(where, f"statement {sid}: grants wildcard S3 action {a}")
            s3_actions = [a for a in actions if a.startswith("s3:")]
            if s3_actions:
                for r in resources:
                    self.check_s3_resource(where, sid, r)
                    self.check_checkpoint_owner(where, sid, s3_actions, r)
            if any(a in SECRET_ACTIONS for a in actions):
                for r in resources:
                    ok = isinstance(r, dict) and set(r) == {"Ref"} and r["Ref"] in self.params
                    if not ok:
                        self.fail(where, f"statement {sid}: secrets read on {text_of(r)!r}, not on ARNs named by a parameter")

    def check_s3_resource(self, where: str, sid: str, resource: Any) -> None:
        text = text_of(resource)
        if text == "*":
            self.fail(where, f"statement {sid}: S3 action on Resource *")
            return
        m = re.search(r":s3:::(.*)$", text)
        if not m:
            self.fail(where, f"statement {sid}: S3 resource {text!r} is not an S3 ARN")
            return
        path = m.group(1)
        bucket, _, key = path.partition("/")
        if "*" in bucket or bucket == "":
            self.fail(where, f"statement {sid}: wildcard bucket in {text!r}")
            return
        if "/" not in path:
            return  # the bucket itself (ListBucket, ListBucketMultipartUploads)
        if key == "*" or key.startswith("*"):
            self.fail(where, f"statement {sid}: whole bucket {text!r} (object ARNs need a prefix)")
            return
        if "*" in key.rstrip("*"):
            self.fail(where, f"statement {sid}: wildcard inside the key of {text!r}")
        for ref in re.findall(r"\$\{([A-Za-z0-9]+)\}", key):
            param = self.params.get(ref)
            if param is None:
                self.fail(where, f"statement {sid}: prefix ${{{ref}}} of {text!r} is not a parameter")
                continue
            pattern = param.get("AllowedPattern")
            if not pattern:
                self.fail(where, f"statement {sid}: prefix parameter {ref} has no AllowedPattern (it could be empty: the whole bucket)")
            elif re.fullmatch(pattern, "") or re.fullmatch(pattern, "*") or re.fullmatch(pattern, "*/"):
                self.fail(where, f"statement {sid}: prefix parameter {ref} accepts an empty or wildcard prefix")

    def binary_of(self, name: str) -> str | None:
        res = self.resources.get(name) or {}
        return ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")

    def check_checkpoint_owner(self, where: str, sid: str, actions: list[str], resource: Any) -> None:
        """Checkpoints name uploads and hold the tail of a job: a function reads and writes only
        its own, under _sluice/checkpoints/<its crate>/."""
        text = text_of(resource)
        m = re.search(r":s3:::[^/]+/(.*)$", text)
        if not m or not m.group(1).startswith(CHECKPOINTS):
            return
        rest = m.group(1)[len(CHECKPOINTS):]
        if rest in ("*", ""):
            extra = sorted(set(actions) - CHECKPOINT_READ_ACTIONS)
            if extra:
                self.fail(where, f"statement {sid}: {', '.join(extra)} on every function's checkpoints ({text!r}); only reads may span {CHECKPOINTS}")
            return
        owner = rest.split("/", 1)[0]
        binary = self.binary_of(where)
        if owner != binary:
            self.fail(where, f"statement {sid}: checkpoints of another function ({text!r}; {where} is {binary or 'no function'})")

    # ------------------------------------------------------------------ functions
    def functions(self) -> dict[str, dict[str, Any]]:
        return {n: r for n, r in self.resources.items() if r.get("Type") in FUNCTION_TYPES}

    def prop(self, res: dict[str, Any], key: str) -> Any:
        props = res.get("Properties", {}) or {}
        if key in props:
            return props[key]
        if res.get("Type") == "AWS::Serverless::Function":
            return self.globals_fn.get(key)
        return None

    def check_functions(self) -> None:
        fns = self.functions()
        if not fns:
            self.fail("Resources", "no functions")
        binaries = {}
        for name, res in fns.items():
            runtime = self.prop(res, "Runtime")
            if runtime != RUNTIME:
                self.fail(name, f"Runtime {runtime!r}, want {RUNTIME}")
            arch = self.prop(res, "Architectures")
            if arch != ARCHITECTURES:
                self.fail(name, f"Architectures {arch!r}, want {ARCHITECTURES}")
            self.check_memory(name, self.prop(res, "MemorySize"))
            timeout = self.prop(res, "Timeout")
            if timeout is None:
                self.fail(name, "no Timeout")
            log = self.prop(res, "LoggingConfig") or {}
            if log.get("LogFormat") != "JSON":
                self.fail(name, "LoggingConfig.LogFormat is not JSON")
            meta = res.get("Metadata", {}) or {}
            if res.get("Type") == "AWS::Serverless::Function":
                if meta.get("BuildMethod") != "rust-cargolambda":
                    self.fail(name, "Metadata.BuildMethod is not rust-cargolambda")
                binary = (meta.get("BuildProperties", {}) or {}).get("Binary")
                if not binary:
                    self.fail(name, "Metadata.BuildProperties.Binary missing")
                else:
                    binaries[binary] = name
                    if not (ROOT / "functions" / binary / "Cargo.toml").is_file():
                        self.fail(name, f"Binary {binary!r} is not a crate under functions/")
            self.check_trigger(name, res, meta)
            self.check_dead_letter(name, res)
        if self.path.resolve().parent == ROOT / "infra":
            for crate in sorted((ROOT / "functions").glob("*/Cargo.toml")):
                if crate.parent.name not in binaries:
                    self.fail("Resources", f"functions/{crate.parent.name} has no function in the template")

    def check_memory(self, name: str, memory: Any) -> None:
        if memory == MEMORY_MB:
            return
        if isinstance(memory, dict) and set(memory) == {"Ref"}:
            param = self.params.get(memory["Ref"], {})
            if str(param.get("Default")) == str(MEMORY_MB):
                return
        self.fail(name, f"MemorySize {memory!r}, want {MEMORY_MB} or a parameter defaulting to {MEMORY_MB}")

    def check_trigger(self, name: str, res: dict[str, Any], meta: dict[str, Any]) -> None:
        events = (res.get("Properties", {}) or {}).get("Events") or {}
        if not events:
            if str(meta.get("SluiceNoTriggerReason", "")).strip():
                return
            self.fail(name, "no trigger (Events) and no Metadata.SluiceNoTriggerReason saying why")
            return
        for ev_name, ev in events.items():
            etype = ev.get("Type")
            props = ev.get("Properties", {}) or {}
            where = f"{name}.Events.{ev_name}"
            if etype in SCHEDULE_EVENTS and not props.get("Input"):
                self.fail(where, "schedule without an Input (the job spec)")
            elif etype in SCHEDULE_EVENTS:
                self.check_input_json(where, props["Input"])
            if etype == "S3":
                rules = json.dumps(props.get("Filter", {}))
                if '"prefix"' not in rules.lower():
                    self.fail(where, "S3 trigger without a prefix filter")
            if etype == "EventBridgeRule":
                pattern = props.get("Pattern", {}) or {}
                if "aws.s3" in json.dumps(pattern) and '"prefix"' not in json.dumps(pattern):
                    self.fail(where, "S3 EventBridge rule without a key prefix filter")
                template = (props.get("InputTransformer") or {}).get("InputTemplate")
                if isinstance(template, str):
                    # Every <placeholder> stands for a JSON value (or text inside a string).
                    try:
                        json.loads(re.sub(r"<[A-Za-z0-9_.-]+>", "1", template))
                    except ValueError as e:
                        self.fail(where, f"InputTemplate is not JSON once filled ({e})")
            if etype in ASYNC_EVENTS:
                if not (props.get("DeadLetterConfig") or {}):
                    self.fail(where, "no DeadLetterConfig (undeliverable events would be lost)")
                if not (props.get("RetryPolicy") or {}):
                    self.fail(where, "no RetryPolicy")

    def check_input_json(self, where: str, value: Any) -> None:
        """A schedule Input written in the template (a literal or a !Sub of parameters) must be
        JSON once rendered; one given whole by a parameter (!Ref) is the deployer's."""
        if isinstance(value, dict) and set(value) == {"Ref"}:
            return
        text = text_of(value)

        def param(m: re.Match[str]) -> str:
            name = m.group(1)
            default = (self.params.get(name) or {}).get("Default")
            return str(default) if default not in (None, "") else "x"

        rendered = re.sub(r"\$\{([A-Za-z0-9:]+)\}", param, text)
        try:
            json.loads(rendered)
        except ValueError as e:
            self.fail(where, f"Input is not JSON once rendered ({e}): {rendered[:200]}")

    def check_dead_letter(self, name: str, res: dict[str, Any]) -> None:
        if self.prop(res, "DeadLetterQueue"):
            return
        eic = self.prop(res, "EventInvokeConfig") or {}
        if not eic:
            # A plain AWS::Lambda::Function may have a separate AWS::Lambda::EventInvokeConfig.
            eic = next(
                (
                    r.get("Properties", {})
                    for r in self.resources.values()
                    if r.get("Type") == "AWS::Lambda::EventInvokeConfig"
                    and text_of(r.get("Properties", {}).get("FunctionName")) in ("${%s}" % name, name)
                ),
                {},
            )
        on_failure = ((eic.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        if not on_failure:
            self.fail(name, "no dead-letter queue or on-failure destination for asynchronous failures")
            return
        for key in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds"):
            if eic.get(key) is None:
                self.fail(name, f"EventInvokeConfig.{key} not set")

    # ------------------------------------------------------------------ bucket
    def check_bucket(self) -> None:
        buckets = {n: r for n, r in self.resources.items() if r.get("Type") == "AWS::S3::Bucket"}
        policies = [r for r in self.resources.values() if r.get("Type") == "AWS::S3::BucketPolicy"]
        if not buckets:
            self.fail("Resources", "no data bucket (AWS::S3::Bucket, conditional on a parameter for an existing one)")
        for name, res in buckets.items():
            p = res.get("Properties", {}) or {}
            pab = p.get("PublicAccessBlockConfiguration") or {}
            for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
                if pab.get(key) is not True:
                    self.fail(name, f"PublicAccessBlockConfiguration.{key} is not true")
            if not (p.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration"):
                self.fail(name, "no default encryption")
            rules = as_list((p.get("LifecycleConfiguration") or {}).get("Rules", []))
            if not any(
                (r.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation") == 1
                and r.get("Status") == "Enabled"
                for r in rules
            ):
                self.fail(name, "no enabled lifecycle rule AbortIncompleteMultipartUpload after 1 day")
            tls = False
            for pol in policies:
                pp = pol.get("Properties", {}) or {}
                if text_of(pp.get("Bucket")) not in ("${%s}" % name,):
                    continue
                for st in as_list((pp.get("PolicyDocument") or {}).get("Statement", [])):
                    cond = json.dumps(st.get("Condition", {}))
                    if st.get("Effect") == "Deny" and "aws:SecureTransport" in cond and '"false"' in cond:
                        tls = True
            if not tls:
                self.fail(name, "no bucket policy denying requests without TLS (aws:SecureTransport false)")

    # ------------------------------------------------------------------ backfill
    def check_state_machine(self) -> None:
        machines = {n: r for n, r in self.resources.items() if r.get("Type") == "AWS::Serverless::StateMachine"}
        transform = [n for n, r in self.functions().items() if ((r.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary") == "transform-s3"]
        if not machines:
            self.fail("Resources", "no backfill state machine (AWS::Serverless::StateMachine)")
            return
        for name, res in machines.items():
            p = res.get("Properties", {}) or {}
            definition = p.get("Definition")
            if not isinstance(definition, dict):
                self.fail(name, "no inline Definition")
                continue
            self.check_asl(name, definition)
            self.check_trigger(name, res, {"SluiceNoTriggerReason": "started by hand"})
            if self.is_job_loop(definition):
                self.check_job_loop(name, p, definition.get("States") or {})
                continue
            maps = list(self.distributed_maps(definition.get("States", {})))
            if not maps:
                self.fail(name, "no Distributed Map (Map with ItemProcessor.ProcessorConfig.Mode DISTRIBUTED) and no continue loop (a Choice on status continue)")
            for state_name, state in maps:
                where = f"{name}.{state_name}"
                reader = text_of((state.get("ItemReader") or {}).get("Resource", ""))
                if not reader.endswith(":s3:listObjectsV2"):
                    self.fail(where, f"ItemReader {reader!r} does not list objects (s3:listObjectsV2)")
                if "MaxConcurrency" not in state and "MaxConcurrencyPath" not in state:
                    self.fail(where, "no MaxConcurrency")
                if not any(k.startswith("ToleratedFailure") for k in state):
                    self.fail(where, "no ToleratedFailurePercentage")
                invoked = json.dumps(state.get("ItemProcessor", {}))
                if not transform or not any(f'"{t}"' in invoked or f"{t}." in invoked for t in transform):
                    self.fail(where, "does not invoke transform-s3")
                processor = state.get("ItemProcessor") or {}
                if self.is_job_loop(processor):
                    # Each item runs the continue loop; its first event is the ItemSelector's.
                    self.check_job_loop(where, p, processor.get("States") or {}, state.get("ItemSelector"))
            invoke_ok = start_ok = False
            for st in self.machine_statements(p):
                actions = [text_of(a).lower() for a in as_list(st.get("Action", []))]
                resources = [text_of(r) for r in as_list(st.get("Resource", []))]
                if "lambda:invokefunction" in actions:
                    invoke_ok = True
                    for r in resources:
                        if not any(r.startswith("${%s." % t) or r == "${%s}" % t for t in transform):
                            self.fail(name, f"lambda:InvokeFunction on {r!r}, not only transform-s3")
                if "states:startexecution" in actions:
                    start_ok = True
            if not invoke_ok:
                self.fail(name, "role lacks lambda:InvokeFunction on transform-s3")
            if not start_ok:
                self.fail(name, "role lacks states:StartExecution (Distributed Map child workflows)")

    @staticmethod
    def is_job_loop(definition: dict[str, Any]) -> bool:
        return any(
            st.get("Type") == "Choice"
            and any(c.get("StringEquals") == "continue" for c in st.get("Choices", []) or [])
            for st in (definition.get("States") or {}).values()
            if isinstance(st, dict)
        )

    def check_job_loop(self, name: str, props: dict[str, Any], states: dict[str, Any], first_event: Any = None) -> None:
        """A loop that runs a job across invocations: each task invoking the function retries
        Lambda's transient errors, killed invocations and Retryable, and has a Catch that keeps the
        event (an abort event after a failure names the checkpoint in it); a task sends that abort
        event; an opt-in function is told "continuable": true; the function may read, write and
        delete its own checkpoints; the role invokes only the function the tasks name."""
        tasks = {n: st for n, st in states.items() if isinstance(st, dict) and st.get("Type") == "Task"}
        invoked = set()
        for task_name, task in tasks.items():
            where = f"{name}.{task_name}"
            fn = text_of((task.get("Parameters") or {}).get("FunctionName", ""))
            invoked.add(fn.split(".")[0].strip("${}"))
            errors = {e for r in task.get("Retry", []) or [] for e in r.get("ErrorEquals", [])}
            if "States.ALL" not in errors and not LAMBDA_TRANSIENT <= errors:
                self.fail(where, "no Retry on Lambda.ServiceException and Lambda.TooManyRequestsException")
            is_abort = "abort" in ((task.get("Parameters") or {}).get("Payload") or {})
            if not is_abort and "States.ALL" not in errors:
                missing = sorted((KILLED | {"Retryable"}) - errors)
                if missing:
                    self.fail(where, f"no Retry on {', '.join(missing)} (a killed invocation resumes from its checkpoint with the same event)")
            catches = task.get("Catch") or []
            if not catches:
                self.fail(where, "no Catch (a failed job must abort its upload)")
            for c in catches if not is_abort else []:
                if "ResultPath" not in c or c.get("ResultPath") == "$":
                    self.fail(where, "Catch without a ResultPath below $ replaces the event: the abort event would not find its checkpoint")
        aborts = [t for t in tasks.values() if "abort" in ((t.get("Parameters") or {}).get("Payload") or {})]
        if not aborts:
            self.fail(name, "no task sends an abort event after a failure")
        functions = self.functions()
        for fn in sorted(invoked):
            binary = self.binary_of(fn)
            if fn not in functions or not binary:
                continue
            if binary in OPT_IN_CONTINUABLE and not self.sets_continuable([states, first_event]):
                self.fail(name, f'{binary} is invoked without "continuable": true (it would run in one invocation and never answer continue)')
            granted: set[str] = set()
            for owner, st in self.statements():
                if owner != fn or st.get("Effect") != "Allow":
                    continue
                if any(text_of(r).endswith(f"/{CHECKPOINTS}{binary}/*") for r in as_list(st.get("Resource", []))):
                    granted |= {text_of(a).lower() for a in as_list(st.get("Action", []))}
            missing = [CHECKPOINT_NAMES[a] for a in sorted(CHECKPOINT_ACTIONS - granted)]
            if missing:
                self.fail(fn, f"runs in the continue loop of {name} but may not {', '.join(missing)} under {CHECKPOINTS}{binary}/")
            if not self.deletes_outputs(fn):
                self.fail(fn, f"runs in the continue loop of {name} but may not s3:DeleteObject on its outputs (a partitioned job given up between invocations deletes the objects it completed)")
        for st in self.machine_statements(props):
            actions = [text_of(a).lower() for a in as_list(st.get("Action", []))]
            if "lambda:invokefunction" not in actions:
                continue
            for r in as_list(st.get("Resource", [])):
                fn = text_of(r).split(".")[0].strip("${}")
                if fn not in invoked:
                    self.fail(name, f"lambda:InvokeFunction on {text_of(r)!r}, which no task invokes")

    def deletes_outputs(self, fn: str) -> bool:
        """Whether function `fn` may delete objects outside the reserved _sluice/ prefix."""
        for owner, st in self.statements():
            if owner != fn or st.get("Effect") != "Allow":
                continue
            if "s3:deleteobject" not in {text_of(a).lower() for a in as_list(st.get("Action", []))}:
                continue
            for r in as_list(st.get("Resource", [])):
                m = re.search(r":s3:::[^/]+/(.+)$", text_of(r))
                if m and not m.group(1).startswith("_sluice/"):
                    return True
        return False

    @staticmethod
    def sets_continuable(value: Any) -> bool:
        """Whether a state's Parameters, ItemSelector or JSONata Output puts "continuable": true
        into the event."""
        if isinstance(value, dict):
            if value.get("continuable") is True:
                return True
            return any(Checker.sets_continuable(v) for v in value.values())
        if isinstance(value, list):
            return any(Checker.sets_continuable(v) for v in value)
        if isinstance(value, str) and value.startswith("{%"):
            return re.search(r'"continuable"\s*:\s*true\b', value) is not None
        return False

    def machine_statements(self, props: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for policy in as_list(props.get("Policies", [])):
            if isinstance(policy, dict) and "Statement" in policy:
                for st in as_list(policy["Statement"]):
                    if isinstance(st, dict) and st.get("Effect") == "Allow":
                        yield st

    def distributed_maps(self, states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for state_name, state in (states or {}).items():
            if not isinstance(state, dict):
                continue
            if state.get("Type") == "Map":
                proc = state.get("ItemProcessor") or {}
                if (proc.get("ProcessorConfig") or {}).get("Mode") == "DISTRIBUTED":
                    yield state_name, state
                yield from self.distributed_maps(proc.get("States", {}))
            for branch in state.get("Branches", []) or []:
                yield from self.distributed_maps(branch.get("States", {}))

    def check_asl(self, name: str, definition: dict[str, Any]) -> None:
        """Validates the definition against the ASL schema cfn-lint ships (cfn-lint itself does
        not look inside a SAM inline Definition). Intrinsics become the string they substitute to,
        so a number given as !Ref (a quoted string after substitution) is caught."""
        import importlib.resources

        import jsonschema

        schema_file = importlib.resources.files("cfnlint") / "data/schemas/other/step_functions/statemachine.json"
        schema = json.loads(schema_file.read_text())

        def strip(v: Any) -> Any:
            if isinstance(v, dict):
                if len(v) == 1 and next(iter(v)) in ("Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join", "Fn::If"):
                    return "${substituted}"
                return {k: strip(x) for k, x in v.items()}
            if isinstance(v, list):
                return [strip(x) for x in v]
            return v

        # 2020-12 semantics: the schema puts keywords beside "$ref", which draft 7 would ignore.
        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(strip(definition)), key=lambda e: list(e.path)):
            path = "/".join(str(x) for x in err.path)
            self.fail(name, f"Definition {path}: {err.message[:300]}")

    # ------------------------------------------------------------------ outputs
    def check_outputs(self) -> None:
        outputs = json.dumps(self.t.get("Outputs", {}) or {})
        for name in self.functions():
            if f'"{name}", "Arn"' not in outputs and f'"{name}.Arn"' not in outputs:
                self.fail("Outputs", f"no output with the ARN of {name}")
        queues = [n for n, r in self.resources.items() if r.get("Type") == "AWS::SQS::Queue"]
        if queues and not any(f'"{n}"' in outputs for n in queues):
            self.fail("Outputs", "no output for the queue")
        machines = [n for n, r in self.resources.items() if r.get("Type") == "AWS::Serverless::StateMachine"]
        if machines and not any(f'"{n}"' in outputs for n in machines):
            self.fail("Outputs", "no output for the state machine")
        for n in machines:
            if any(f'"{m}"' in outputs for m in machines) and f'{{"Ref": "{n}"}}' not in outputs:
                self.fail("Outputs", f"no output with the ARN (!Ref) of the state machine {n}")
        if not re.search(r"Bucket", outputs):
            self.fail("Outputs", "no output for the bucket")

    def run(self) -> list[str]:
        self.check_iam()
        self.check_functions()
        self.check_bucket()
        self.check_state_machine()
        self.check_outputs()
        return self.errors


def expect_fail(paths: list[str]) -> int:
    """Each file must be rejected, with a message containing its "# expect: <text>" line."""
    bad = 0
    for path in paths:
        text = Path(path).read_text()
        m = re.search(r"^# expect: (.+)$", text, re.M)
        if not m:
            print(f"{path}: no '# expect: <message>' line")
            bad += 1
            continue
        expected = m.group(1).strip()
        errors = Checker(Path(path)).run()
        if not errors:
            print(f"FAIL {path}: accepted, but it must be rejected ({expected})")
            bad += 1
        elif not any(expected in e for e in errors):
            print(f"FAIL {path}: rejected, but not for {expected!r}:")
            for e in errors:
                print(f"    {e}")
            bad += 1
        else:
            print(f"ok   {path}: rejected ({expected})")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--expect-fail"]:
        if len(argv) < 2:
            print("--expect-fail needs files")
            return 2
        return expect_fail(argv[1:])
    path = Path(argv[0]) if argv else ROOT / "infra" / "template.yaml"
    errors = Checker(path).run()
    for e in errors:
        print(e)
    if errors:
        print(f"{path}: {len(errors)} policy violation(s)")
        return 1
    print(f"{path}: policy check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
