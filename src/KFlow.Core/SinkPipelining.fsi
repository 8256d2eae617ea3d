// How a runtime may run a sink's writes: one at a time per substream (every ordinary sink), or up to
// N at once for a sink that keeps the order per key itself (e.g. the PostgreSQL upsert writer).
namespace KFlow

open System.Threading.Tasks

/// <summary>How the runtime may run the writes of one substream (lane) of a sink.</summary>
/// <remarks>With <c>InFlight</c> = 1 (every ordinary sink) a write starts only after the one before
/// it in its substream ended. With more, the runtime starts up to <c>InFlight</c> writes of a
/// substream without waiting, each after calling <c>Reserve</c> (in request order, on the partition's
/// loop), and calls <c>Release</c> once the write ended for good (after its retries in place; also
/// when it failed). The sink must then keep the order per key itself: a value reserved later whose
/// keys overlap an earlier one's must not be applied before the earlier one is released.</remarks>
[<NoEquality; NoComparison>]
type SinkPipelining = {
    /// Writes of one substream the runtime runs at once (≥ 1). Default 1: each write waits for the
    /// one before it.
    InFlight: int
    /// Called (InFlight > 1 only) with the value when its write starts, in request order per
    /// substream, on the runtime's loop; must not block or throw. The write itself starts when the
    /// returned Task completes, so a write waiting for an earlier one of its keys holds no slot of
    /// MaxConcurrentWrites. Default: completed at once.
    Reserve: obj -> Task
    /// Called (InFlight > 1 only) with the value once the runtime will not write it again: its write
    /// (retries in place included) succeeded, was dead-lettered, or failed and went to the error
    /// policy. Any thread; must not throw. Default: nothing.
    Release: obj -> unit
}

/// Making SinkPipelining values.
[<RequireQualifiedAccess>]
module SinkPipelining =
    /// One write at a time per substream (InFlight 1): what Pipe.sink gives every sink.
    val sequential: SinkPipelining

    /// Up to <c>inFlight</c> writes per substream, ordered by the sink through
    /// <c>reserve</c> and <c>release</c> (see SinkPipelining). ArgumentException if inFlight &lt; 1.
    val create: inFlight: int -> reserve: (obj -> Task) -> release: (obj -> unit) -> SinkPipelining
