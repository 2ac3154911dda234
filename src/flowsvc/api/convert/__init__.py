"""The one place where protobuf messages become domain records and back: flow definitions
(`flows`), and live flows, sessions, runs, events and evaluation jobs (`records`)."""

from flowsvc.api.convert.batches import event_batches
from flowsvc.api.convert.flows import (
    graph_from_pb,
    known_enum,
    step_from_pb,
    step_to_pb,
    timestamp,
    transition_from_pb,
    version_to_pb,
)
from flowsvc.api.convert.records import (
    customer_from_pb,
    datetime_from_pb,
    dict_to_struct,
    eval_job_to_pb,
    event_bytes,
    event_to_pb,
    flow_to_pb,
    message_from_pb,
    message_to_pb,
    run_options_from_pb,
    run_to_pb,
    session_status_from_pb,
    session_step_to_pb,
    session_to_pb,
    struct_to_dict,
)

__all__ = [
    "customer_from_pb",
    "datetime_from_pb",
    "dict_to_struct",
    "eval_job_to_pb",
    "event_batches",
    "event_bytes",
    "event_to_pb",
    "flow_to_pb",
    "graph_from_pb",
    "known_enum",
    "message_from_pb",
    "message_to_pb",
    "run_options_from_pb",
    "run_to_pb",
    "session_status_from_pb",
    "session_step_to_pb",
    "session_to_pb",
    "step_from_pb",
    "step_to_pb",
    "struct_to_dict",
    "timestamp",
    "transition_from_pb",
    "version_to_pb",
]
