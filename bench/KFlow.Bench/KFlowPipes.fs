// The KFlow contenders (b), (c), (e), (f): their pipes, built from the pure core, and the SLOTS where
// each runs on Kafka. A slot returns None until it is wired to Workflow.run (src/KFlow.Kafka).
module KFlow.Bench.KFlowPipes

open System
open System.Threading.Tasks
open KFlow
open KFlow.Bench.RuntimeInput

/// (b) map → filter → no-op sink; the sink counts on `meter`.
let mapFilterPipe (meter: Meter) : Pipe<string, Sunk> =
    Pipe.source<string>
    |> Pipe.map map
    |> Pipe.filter keep
    |> Pipe.sink "no-op" (fun (_: int64) ->
        meter.Hit()
        Task.CompletedTask)

/// Batch size of (c)'s aggregate. 100.
[<Literal>]
let BatchSize = 100

/// (c) map → demux (1,000 keys) → aggregate (batches of 100) → no-op sink counting batch sizes.
let demuxAggregatePipe (meter: Meter) : Pipe<string, Sunk> =
    Pipe.source<string>
    |> Pipe.map (fun v -> map v)
    |> Pipe.demux (fun n -> key (int n)) (fun sub -> sub |> Pipe.aggregate (Buffer.count BatchSize))
    |> Pipe.sink "no-op" (fun (batch: int64 list) ->
        meter.Hit batch.Length
        Task.CompletedTask)

/// (e) the async step's duration per message. 5 ms.
let asyncStep = TimeSpan.FromMilliseconds 5.0

/// (e) demux (1,000 keys) → async step of 5 ms (one call in flight per key keeps per-key order) →
/// no-op sink.
let asyncDemuxPipe (meter: Meter) : Pipe<string, Sunk> =
    Pipe.source<string>
    |> Pipe.map map
    |> Pipe.demux (fun n -> key (int n)) (fun sub ->
        sub
        |> Pipe.mapAsync 1 (fun n -> task {
            do! Task.Delay asyncStep
            return n
        }))
    |> Pipe.sink "no-op" (fun (_: int64) ->
        meter.Hit()
        Task.CompletedTask)

/// (f) the sink's rate limit. 1,000 messages/s.
let backlogSinkRate = 1000.0

/// (f) map → sink accepting 1,000 messages/s (each write waits its share of a second).
let backlogPipe (meter: Meter) : Pipe<string, Sunk> =
    Pipe.source<string>
    |> Pipe.map map
    |> Pipe.sink "slow" (fun (_: int64) -> task {
        do! Task.Delay(TimeSpan.FromSeconds(1.0 / backlogSinkRate))
        meter.Hit()
    })

/// (e)'s figure: the rate reached and the ideal (concurrency × 200 msg/s).
type AsyncFigure = {
    /// Messages/s reached.
    Achieved: float
    /// Concurrency (substreams running an async call at once) × 1 / 5 ms.
    Ideal: float
}

// ---------------------------------------------------------------------------------------------
// SLOTS: wire each to Workflow.run (src/KFlow.Kafka) with a fresh group id over input.Topic.

/// SLOT (b): runs mapFilterPipe over the whole input; messages/s. None: not wired yet.
let mapFilter (input: Input) : float option =
    ignore input
    None

/// SLOT (c): runs demuxAggregatePipe over the whole input; messages/s. None: not wired yet.
let demuxAggregate (input: Input) : float option =
    ignore input
    None

/// SLOT (e): runs asyncDemuxPipe over the input; the rate against the ideal. None: not wired yet.
let asyncDemux (input: Input) : AsyncFigure option =
    ignore input
    None

/// SLOT (f), run in a child process holding nothing else: runs backlogPipe over the input for
/// `duration` (or until every message is sunk), then stops. false: not wired yet.
let backlog (input: Input) (duration: TimeSpan) : bool =
    ignore (input, duration)
    false
