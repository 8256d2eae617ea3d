// What ends an incarnation: a failure report (where and what) or a graceful stop. The partition
// loops raise the reports, the consumer thread turns the first one into the incarnation's outcome.
namespace KFlow.Kafka

/// A failure that stops the incarnation: where and what.
[<NoEquality; NoComparison>]
type internal FailureReport = {
    TopicPartition: KFlow.TopicPartition voption
    Offset: int64 voption
    /// The key of the failed message, when known.
    Key: string voption
    Stage: string
    Error: exn
}

/// How an incarnation ended.
[<NoEquality; NoComparison>]
type internal Outcome =
    /// StopAsync was called; the graceful stop ran.
    | Stopped
    /// A failure stopped it; the safe commit points were committed.
    | Failed of FailureReport
