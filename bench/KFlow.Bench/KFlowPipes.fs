// The KFlow contenders (b), (c), (e), (f): their pipes, built from the pure core, run on Kafka by
// Workflow.run (src/KFlow.Kafka) with a fresh group over the input, default runtime settings.
module KFlow.Bench.KFlowPipes

open System
open System.Diagnostics
open System.Threading.Tasks
open KFlow
open KFlow.Kafka
open KFlow.Testing
open KFlow.Bench.RuntimeInput

/// (b) map → filter → no-op sink; the sink counts on `meter`.
let mapFilterPipe (meter: Meter) : Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map (fun v ->
        meter.Start()
        map v)
    |> Pipe.filter keep
    |> Pipe.sink "no-op" (fun (_: int64) ->
        meter.Hit()
        Task.CompletedTask)

/// Batch size of (c)'s aggregate. 100.
[<Literal>]
let BatchSize = 100

/// (c) map → demux (1,000 keys) → aggregate (batches of 100) → no-op sink counting batch sizes. The
/// demux is by the Kafka message key (demuxByKey: "k0000" .. "k0999", the key RuntimeInput gives
/// message i), the usual per-key split; until 2026-11-27 it computed the same key from the value,
/// building two strings per message in the benchmark's own key function.
let demuxAggregatePipe (meter: Meter) : Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map (fun v ->
        meter.Start()
        map v)
    |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate (Buffer.count BatchSize))
    |> Pipe.sink "no-op" (fun (batch: int64 list) ->
        meter.Hit batch.Length
        Task.CompletedTask)

/// (e) the async step's duration per message. 5 ms.
let asyncStep = TimeSpan.FromMilliseconds 5.0

/// (e) demux (1,000 keys) → async step of 5 ms (one call in flight per key keeps per-key order) →
/// no-op sink. Its concurrency is the key count.
let asyncDemuxPipe (timer: AsyncStep.Timer) (meter: Meter) : Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map (fun v ->
        meter.Start()
        map v)
    |> Pipe.demux (fun n -> key (int n)) (fun sub ->
        sub
        |> Pipe.mapAsync 1 (fun n -> task {
            do! AsyncStep.wait timer asyncStep
            return n
        }))
    |> Pipe.sink "no-op" (fun (_: int64) ->
        meter.Hit()
        Task.CompletedTask)

/// A rate limit shared by every caller: each call reserves the next slot and waits for it.
[<Sealed>]
type RateLimit(perSecond: float) =
    let interval = int64 (float Stopwatch.Frequency / perSecond)
    let gate = obj ()
    let mutable next = Stopwatch.GetTimestamp()

    /// Waits for the next free slot.
    member _.Acquire() : Task =
        let now = Stopwatch.GetTimestamp()

        let due =
            lock gate (fun () ->
                next <- max next now + interval
                next)

        let wait = Stopwatch.GetElapsedTime(now, due)

        if wait > TimeSpan.FromMilliseconds 1.0 then
            Task.Delay wait
        else
            Task.CompletedTask

/// (f) the sink's rate limit. 1,000 messages/s.
let backlogSinkRate = 1000.0

/// (f) map → sink accepting 1,000 messages/s in all (one rate limit shared by every partition).
let backlogPipe (limit: RateLimit) (meter: Meter) : Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map (fun v ->
        meter.Start()
        map v)
    |> Pipe.sink "slow" (fun (_: int64) -> task {
        do! limit.Acquire()
        meter.Hit()
    })

/// (e)'s figure: the rate reached and the ideal (concurrency × 200 msg/s).
type AsyncFigure = {
    /// Messages/s reached.
    Achieved: float
    /// Concurrency (substreams running an async call at once) × 1 / 5 ms.
    Ideal: float
}

/// Workflow options for a contender: a fresh group on the input, the consumer settings of
/// `fetching` (as the raw loop and Streamiz get), commits every second (as the raw loop).
let private options (fetching: Fetching) (name: string) (input: Input) =
    let group = $"kflow-bench-{name}-{Guid.NewGuid():N}"

    let defaults =
        WorkflowOptions.create name input.BootstrapServers group [ input.Topic ]

    {
        defaults with
            Properties = consumerSettings fetching
            // KFLOW_BENCH_MAX_IN_FLIGHT=N sets MaxInFlightMessages (default 50,000), for experiments.
            Backpressure =
                match Environment.GetEnvironmentVariable "KFLOW_BENCH_MAX_IN_FLIGHT" with
                | null -> defaults.Backpressure
                | n -> {
                    defaults.Backpressure with
                        MaxInFlightMessages = int n
                  }
            CommitInterval = TimeSpan.FromSeconds 1.0
            // KFLOW_BENCH_LOG=1 prints the runtime's log (pauses, resumes, commits) to stderr.
            Log =
                (if isNull (Environment.GetEnvironmentVariable "KFLOW_BENCH_LOG") then
                     ignore
                 else
                     fun line -> eprintfn "%s %s" (DateTime.UtcNow.ToString "HH:mm:ss.fff") line)
    }

/// Runs a pipe until `meter` completes (or `timeout`), then stops the workflow.
let private runUntil
    (name: string)
    (options: WorkflowOptions)
    (timeout: TimeSpan)
    (meter: Meter)
    (pipe: Pipe<byte[], Sunk>)
    =
    let cpu0 = Process.GetCurrentProcess().TotalProcessorTime
    // Precise: under server GC the imprecise count missed what the heaps' allocation contexts held
    // (a run showed 0 bytes per message, the next 13,232).
    let allocated0 = GC.GetTotalAllocatedBytes true
    let gcs0 = Array.init 3 GC.CollectionCount
    let pause0 = GC.GetTotalPauseDuration()
    let handle = Workflow.run options pipe

    try
        meter.Wait(timeout, name)
    finally
        handle.StopAsync().Wait(TimeSpan.FromSeconds 60.0) |> ignore

    if handle.Completion.IsFaulted then
        raise (InvalidOperationException($"The {name} workflow failed.", handle.Completion.Exception))

    let cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds
    let allocated = float (GC.GetTotalAllocatedBytes true - allocated0)
    let gcs = Array.init 3 (fun g -> GC.CollectionCount g - gcs0[g])
    let pause = (GC.GetTotalPauseDuration() - pause0).TotalSeconds

    printfn
        "  %s wall time (start-up included): %.2f s; process CPU %.2f s (%.2f cores), %.1f µs per message; allocated %.0f bytes per message; GCs by generation %A, paused %.2f s"
        name
        meter.WallSeconds
        cpu
        (cpu / meter.WallSeconds)
        (cpu * 1e6 / float meter.Count)
        (allocated / float meter.Count)
        gcs
        pause

    meter.MessagesPerSecond

/// (b): mapFilterPipe over the whole input with the consumer settings of `fetching`; messages/s.
let mapFilter (fetching: Fetching) (input: Input) : float option =
    let meter = Meter input.Messages

    Some(
        runUntil
            "map-filter"
            (options fetching "map-filter" input)
            (TimeSpan.FromMinutes 5.0)
            meter
            (mapFilterPipe meter)
    )

/// (c): demuxAggregatePipe over the whole input; messages/s (batches still buffered when the input
/// ends are flushed by the stop, which the meter does not wait for: it counts to the last full batch).
let demuxAggregate (input: Input) : float option =
    // Each key's last partial batch stays in its aggregate until the stop flushes it.
    let full = input.Messages / Keys / BatchSize * BatchSize * Keys

    if full = 0 then
        printfn "  (c) needs at least %d messages (a full batch per key)" (Keys * BatchSize)
        None
    else
        let meter = Meter full
        let o = options Unthrottled "demux-aggregate" input

        // Keys arrive round-robin, so every key's batch fills only after 100 × 1,000 messages: the
        // in-flight limit must hold them. With the default 50,000, intake stalls until the runtime
        // flushes the half-full batches (FlushWhenStalled, 2 s): 29,000 msgs/s instead of 172,000
        // on 200,000 messages. The partition limit is raised with it: at the default 20,000 open
        // offsets every partition paused several times per run (72 times over 1,000,000 messages)
        // while its batches filled, and under a loaded machine one such pause lasted past
        // FlushWhenStalled: the flush split the batches, so the last partial batch of each key
        // waited for the idle eviction (60 s; one run of 1,000,000 messages took 70 s instead of 9 s).
        let o = {
            o with
                Backpressure = {
                    o.Backpressure with
                        MaxInFlightMessages = 2 * Keys * BatchSize
                        MaxOpenOffsetsPerPartition = 2 * Keys * BatchSize
                }
        }

        Some(runUntil "demux-aggregate" o (TimeSpan.FromMinutes 5.0) meter (demuxAggregatePipe meter))

/// (e): asyncDemuxPipe over the input (its first `limit` messages if given); the rate against the
/// ideal (concurrency × 200 msg/s), where the concurrency is the number of calls the workflow lets
/// run at once: one per key (1,000) under the default MaxConcurrentCalls (1,024), or `cap`
/// (WorkflowOptions.MaxConcurrentCalls) if lower.
let asyncDemux
    (timer: AsyncStep.Timer)
    (cap: int option)
    (limit: int option)
    (input: Input)
    : AsyncFigure option =
    let meter =
        Meter(
            match limit with
            | Some n -> min n input.Messages
            | None -> input.Messages
        )

    let name =
        match cap with
        | Some c -> $"async-demux-cap{c}"
        | None -> "async-demux"

    let o = options Unthrottled name input

    let o = {
        o with
            MaxConcurrentCalls = defaultArg cap o.MaxConcurrentCalls
    }

    let achieved =
        runUntil name o (TimeSpan.FromMinutes 5.0) meter (asyncDemuxPipe timer meter)

    let concurrency = min o.MaxConcurrentCalls (min Keys input.Messages)

    Some {
        Achieved = achieved
        Ideal = float concurrency / asyncStep.TotalSeconds
    }

/// (f), run in a child process holding nothing else: runs backlogPipe over the input for
/// `duration` (or until every message is sunk), printing the working set every 10 s, then stops.
let backlog (input: Input) (duration: TimeSpan) : bool =
    let meter = Meter input.Messages
    let limit = RateLimit backlogSinkRate

    let handle =
        Workflow.run (options Unthrottled "backlog" input) (backlogPipe limit meter)

    let clock = Stopwatch.StartNew()

    while clock.Elapsed < duration && not meter.Completed.IsCompleted do
        meter.Completed.Wait(TimeSpan.FromSeconds 10.0) |> ignore
        use self = Process.GetCurrentProcess()

        printfn
            "  %3.0f s: %d sunk, working set %.1f MB, peak %.1f MB"
            clock.Elapsed.TotalSeconds
            meter.Count
            (float self.WorkingSet64 / 1048576.0)
            (float self.PeakWorkingSet64 / 1048576.0)

    handle.StopAsync().Wait(TimeSpan.FromSeconds 60.0) |> ignore
    true
