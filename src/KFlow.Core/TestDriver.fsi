// The test driver: runs a pipe deterministically in memory (messages, clock ticks, sink results,
// crashes, rebalances) and reports outputs, sink calls and commit points. Users test their pipes with it.
namespace KFlow

open System

/// A deterministic in-memory run of a pipe from 'i inputs to 'o outputs. Immutable.
[<Sealed; NoEquality; NoComparison>]
type TestDriver<'i, 'o>

/// Driving a pipe in tests. Every operation returns a new driver.
[<RequireQualifiedAccess>]
module TestDriver =
    /// The default options: Automatic sinks, AutoCommit true, clock at the Unix epoch, async maps inline.
    val options: DriverOptions

    /// A driver of the pipe with no partition assigned.
    val create: options: DriverOptions -> pipe: Pipe<'i, 'o> -> TestDriver<'i, 'o>

    /// A driver with the default options.
    val start: pipe: Pipe<'i, 'o> -> TestDriver<'i, 'o>

    /// Assigns a partition under a new epoch, to be read from its stored commit point (0 if none).
    /// Assigning an assigned partition does nothing.
    val assign: tp: TopicPartition -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// <summary>Revokes a partition.</summary>
    /// <remarks>
    /// 1. The pipe receives Revoked (buffers flush; in Automatic mode the resulting writes succeed).
    /// 2. The partition's commit point is stored.
    /// 3. The ledger drops the partition: later completions of its tokens are refused (stale).
    /// Revoking an unassigned partition does nothing. With AsyncMode = Defer the Revoked waits at each
    /// async node for the partition's calls in flight (see PipeRun.push); answered later, what it then
    /// flushes holds stale tokens, which the ledger refuses (see refused).
    /// </remarks>
    val revoke: tp: TopicPartition -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Delivers a message. Its partition must be assigned and its offset at least the next offset to
    /// read (gaps allowed); otherwise ArgumentException.
    val feed: message: Message<'i> -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Delivers messages in order.
    val feedAll: messages: Message<'i> list -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Moves the virtual clock forward and sends a Tick through the pipe.
    val advance: by: TimeSpan -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Runs a Pending sink write; its tokens complete if it does not throw. ArgumentException if the
    /// call is not Pending.
    val succeed: callId: int -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Fails a Pending sink write without running it: none of its tokens completes.
    val fail: callId: int -> reason: string -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Runs a Pending async call (Defer mode) and passes its result on (in input order). ArgumentException
    /// if the call is not Pending.
    val runAsync: callId: int -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Fails a Pending async call without running it: its input stays unfinished (its offset open).
    val failAsync: callId: int -> reason: string -> driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Until nothing is Pending: runs the oldest Pending async call, or else succeeds the oldest
    /// Pending sink write (so also the calls and writes they lead to).
    val succeedAll: driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Stores the ledger's commit point of every assigned partition.
    val commit: driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// <summary>Crashes and restarts.</summary>
    /// <remarks>
    /// 1. All pipe state is dropped (stages back to their initial state, no substream).
    /// 2. Pending writes and async calls become Abandoned.
    /// 3. Every assigned partition is assigned again under a new epoch, from its stored commit point;
    ///    the pipe receives Assigned for each.
    /// Nothing is re-fed: call replay (or feed) to read again from the commit points.
    /// </remarks>
    val crash: driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Feeds again every recorded input of an assigned partition from its next offset to read on
    /// (after a crash: its commit point), in the order they were first fed.
    val replay: driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// Shutdown: the pipe receives Flush (every buffer emits), then the commit points are stored. With
    /// AsyncMode = Defer the Flush waits at each async node for the calls in flight there and goes on
    /// once they are answered (runAsync, failAsync, succeedAll): `flush >> succeedAll` writes everything.
    val flush: driver: TestDriver<'i, 'o> -> TestDriver<'i, 'o>

    /// The virtual clock.
    val now: driver: TestDriver<'i, 'o> -> DateTimeOffset

    /// Envelopes that reached the end of the pipe, in order (a pipe ending in a sink has none).
    val outputs: driver: TestDriver<'i, 'o> -> Envelope<'o> list

    /// Every sink write requested, in request order.
    val sinkCalls: driver: TestDriver<'i, 'o> -> SinkCall list

    /// Every deferred async call, in request order.
    val asyncCalls: driver: TestDriver<'i, 'o> -> AsyncCall list

    /// The sink writes still Pending, in request order.
    val pending: driver: TestDriver<'i, 'o> -> SinkCall list

    /// The values of the succeeded writes of one sink, in request order, unboxed to 'v.
    val written: sink: string -> driver: TestDriver<'i, 'o> -> 'v list

    /// The stored commit point of a partition (0 when none was ever stored).
    val committed: tp: TopicPartition -> driver: TestDriver<'i, 'o> -> int64

    /// The stored commit points of every partition ever committed.
    val commitPoints: driver: TestDriver<'i, 'o> -> Map<TopicPartition, int64>

    /// Every change of a stored commit point, oldest first.
    val commitHistory: driver: TestDriver<'i, 'o> -> Commit list

    /// The current ledger (open offsets, epochs, live commit points).
    val ledger: driver: TestDriver<'i, 'o> -> Ledger

    /// The assigned partitions.
    val assigned: driver: TestDriver<'i, 'o> -> TopicPartition list

    /// How many demux substreams are alive.
    val liveSubstreams: driver: TestDriver<'i, 'o> -> int

    /// Stages that threw, oldest first.
    val failures: driver: TestDriver<'i, 'o> -> StageFailure list

    /// Ledger operations refused (stale or unknown tokens), oldest first. Never a silent no-op.
    val refused: driver: TestDriver<'i, 'o> -> LedgerError list

    /// Every distinct input fed (by position), in the order first fed.
    val inputs: driver: TestDriver<'i, 'o> -> Message<'i> list
