// Backpressure as a pure state machine: a gate admits messages while the load is under its limits,
// closes (intake pauses) when a limit is reached, and reopens only once the load has fallen to the
// resume thresholds (hysteresis), so intake does not flap around the limit.
namespace KFlow.Kafka

/// What is in flight: messages consumed and not yet finished, and their payload bytes.
[<Struct>]
type Load = {
    /// Messages in flight.
    Messages: int64
    /// Their key and value bytes.
    Bytes: int64
}

/// The limits of one gate (the whole workflow, or one partition).
type Gate = {
    /// The gate closes when this many messages are in flight.
    MaxMessages: int64
    /// The gate closes when this many bytes are in flight.
    MaxBytes: int64
    /// A closed gate reopens when at most this many messages are in flight …
    ResumeMessages: int64
    /// … and at most this many bytes.
    ResumeBytes: int64
}

/// Functions over Gate and Load.
[<RequireQualifiedAccess>]
module Gate =
    /// A gate closing at the limits and reopening at `resumeAt` (0 ≤ resumeAt < 1) of each.
    let create (maxMessages: int64) (maxBytes: int64) (resumeAt: float) = {
        MaxMessages = maxMessages
        MaxBytes = maxBytes
        ResumeMessages = int64 (float maxMessages * resumeAt)
        ResumeBytes = int64 (float maxBytes * resumeAt)
    }

    /// The load with one more message of `size` bytes.
    let add (size: int64) (load: Load) = {
        Messages = load.Messages + 1L
        Bytes = load.Bytes + size
    }

    /// Whether one more message of `size` bytes stays within the limits. A message arriving when
    /// nothing is in flight always fits, so a message larger than MaxBytes cannot stall intake.
    let fits (size: int64) (load: Load) (gate: Gate) =
        load.Messages = 0L
        || (load.Messages + 1L <= gate.MaxMessages && load.Bytes + size <= gate.MaxBytes)

    /// Whether a limit is reached (an open gate closes).
    let full (load: Load) (gate: Gate) =
        load.Messages >= gate.MaxMessages || load.Bytes >= gate.MaxBytes

    /// Whether the load is down to both resume thresholds (a closed gate reopens).
    let relieved (load: Load) (gate: Gate) =
        load.Messages <= gate.ResumeMessages && load.Bytes <= gate.ResumeBytes

    /// The next state of a gate at `load`: a closed gate (true) reopens once relieved, an open
    /// gate (false) closes once full; otherwise the state is kept.
    let next (load: Load) (closed: bool) (gate: Gate) =
        if closed then not (relieved load gate) else full load gate
