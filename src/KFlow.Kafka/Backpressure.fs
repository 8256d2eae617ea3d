// Backpressure as a pure state machine: a gate admits messages while the load is under its limits,
// closes (intake pauses) when a limit is reached, and reopens only once the load has fallen to the
// resume thresholds (hysteresis), so intake does not flap around the limit.
namespace KFlow.Kafka

/// What is in flight: messages consumed and not yet finished, and their payload bytes.
[<Struct>]
type internal Load = {
    /// Messages in flight.
    Messages: int64
    /// Their key and value bytes.
    Bytes: int64
}

/// The limits of one gate (the whole workflow, or one partition).
type internal Gate = {
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
module internal Gate =
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

/// Watches a closed gate for progress: the lowest load seen and since when (milliseconds).
[<Struct>]
type internal Stall = {
    /// The fewest messages in flight seen since the watch started or last moved.
    Lowest: int64
    /// When the load last fell (or the watch started, or it last reported a stall).
    Since: int64
}

/// Functions over Stall: a closed gate whose load has not fallen for a while is stalled (its
/// in-flight messages wait in buffers that only new input, which the gate keeps out, would fill).
[<RequireQualifiedAccess>]
module internal Stall =
    /// A watch starting at time `now`, before any load is seen.
    let start (now: int64) = {
        Lowest = System.Int64.MaxValue
        Since = now
    }

    /// <summary>Observes `messages` in flight at `now`. Returns the new watch and whether the gate is
    /// stalled: the load has not fallen for `after` milliseconds. A reported stall restarts the wait.</summary>
    let watch (now: int64) (messages: int64) (after: int64) (stall: Stall) =
        if messages < stall.Lowest then
            { Lowest = messages; Since = now }, false
        elif now - stall.Since >= after then
            { stall with Since = now }, true
        else
            stall, false
