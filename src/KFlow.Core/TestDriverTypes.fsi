// Signature of the test driver's report types: sink calls, async calls and stored commits.
namespace KFlow

/// How the driver answers sink writes.
type SinkMode =

    /// Every write runs as soon as it is requested (synchronously); it succeeds unless it throws.
    | Automatic

    /// Writes stay Pending until the test calls TestDriver.succeed or TestDriver.fail.
    | Manual

/// The driver's settings.
type DriverOptions = {

    /// How sink writes are answered. Default Automatic.
    SinkMode: SinkMode

    /// Store the ledger's commit points after every operation (true), or only on TestDriver.commit,
    /// revoke and flush (false), so a crash can lose finished-but-uncommitted work. Default true.
    AutoCommit: bool

    /// The virtual clock's start. Default the Unix epoch.
    Start: System.DateTimeOffset

    /// How async maps run: RunInline (during the feed) or Defer (calls stay Pending until
    /// TestDriver.runAsync or failAsync; at most `parallelism` in flight per node). Default RunInline.
    AsyncMode: AsyncMode
}

/// Where a sink write (or a deferred async call) stands.
type SinkStatus =

    /// Requested, not answered yet (Manual mode).
    | Pending

    /// Written; its tokens were completed (those refused by the ledger are in SinkCall.Refused).
    | Succeeded

    /// The write failed: no token completed, so the commit point stays before its inputs.
    | Failed of reason: string

    /// A crash happened while it was pending; it can no longer be answered.
    | Abandoned

/// One sink write the pipe asked for.
[<NoComparison>]
type SinkCall = {

    /// Its number, from 1, in request order.
    Id: int

    /// The sink's name.
    Sink: string

    /// The value written (boxed; a batch from an aggregate is an `'a list`).
    Value: obj

    /// The tokens it holds.
    Tokens: Token list

    /// Where it stands.
    Status: SinkStatus

    /// Completions the ledger refused when it succeeded (stale after a revoke or crash).
    Refused: LedgerError list
}

/// One deferred async map call (AsyncMode = Defer).
[<NoComparison>]
type AsyncCall = {

    /// Its number, from 1, in request order.
    Id: int

    /// The async node's name.
    Stage: string

    /// The input value (boxed).
    Input: obj

    /// The tokens its input holds.
    Tokens: Token list

    /// Pending, Succeeded (its result went on), Failed (its input stays unfinished) or Abandoned (crash).
    Status: SinkStatus
}

/// A commit point stored for a partition.
type Commit = {

    /// The partition.
    TopicPartition: TopicPartition

    /// The offset stored (the next offset to read).
    Offset: int64

    /// The epoch of the assignment it was stored in.
    Epoch: int
}
