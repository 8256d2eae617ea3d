// The pure core's cost per message, without Kafka: the runtime benchmark's pipes (b), (c), (e) driven
// in memory through the calls a partition loop makes per message (src/KFlow.Kafka/PartitionWorker.fs).
module KFlow.Bench.PipeCoreBench

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading.Tasks
open KFlow
open KFlow.Bench.RuntimeInput

let private tp = TopicPartition.create "bench" 0

/// (b) map → filter → no-op sink, as KFlowPipes.mapFilterPipe without its meter.
let mapFilterPipe: Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map map
    |> Pipe.filter keep
    |> Pipe.sink "no-op" (fun (_: int64) -> Task.CompletedTask)

/// (c) map → demux (1,000 keys) → aggregate (batches of 100) → no-op sink.
let demuxAggregatePipe: Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map map
    |> Pipe.demux (fun n -> key (int n)) (fun sub -> sub |> Pipe.aggregate (Buffer.count 100))
    |> Pipe.sink "no-op" (fun (_: int64 list) -> Task.CompletedTask)

/// (e) demux (1,000 keys) → mapAsync 1 (a call that has its result at once) → no-op sink.
let asyncDemuxPipe: Pipe<byte[], Sunk> =
    Pipe.source<byte[]>
    |> Pipe.map map
    |> Pipe.demux (fun n -> key (int n)) (fun sub ->
        sub |> Pipe.mapAsync 1 (fun (n: int64) -> Task.FromResult n))
    |> Pipe.sink "no-op" (fun (_: int64) -> Task.CompletedTask)

/// Messages between two Ticks: a partition loop gets one a second (TickInterval), 50,000 at the
/// rates measured.
[<Literal>]
let TickEvery = 50_000

/// Messages between two reads of the commit point: a loop publishes it after each batch of at most
/// 1,024 commands.
[<Literal>]
let PublishEvery = 1_024

/// One partition loop's core work: the ledger, the PipeRun, the effects applied in PartitionWorker's
/// order (ledger effects, outputs, sink writes completing their tokens, calls), and deferred calls
/// answered oldest first: one per message once `inFlight` are started (0: all, as soon as started).
/// Owned: the run and the ledger are written in place as PartitionWorker and OpenOffsets do
/// (PipeRun.pushMessageOwned, OwnedLedger); else through the value APIs (push / resume and Ledger, a
/// new run and ledger per call).
[<Sealed>]
type private Loop(pipe: Pipe<byte[], Sunk>, inFlight: int, owned: bool) =
    let mutable ledger = Ledger.empty |> Ledger.assign tp 0L
    let ownedLedger = OwnedLedger()
    do ownedLedger.Assign(tp, 0L)
    // Timed as Workflow.run times every pipe (StageTiming), with no listener recording.
    let timed = Pipe.timed (fun () -> false) (fun _ _ -> ()) pipe

    let mutable run =
        if owned then
            PipeRun.startOwnedWith Defer timed
        else
            PipeRun.startWith Defer timed

    let calls = Queue<AsyncRequest>()
    let mutable now = DateTimeOffset.UnixEpoch
    let mutable sunk = 0L

    let refused (e: LedgerError) =
        failwithf "The core benchmark's ledger refused an operation: %A" e

    let complete (t: Token) =
        if owned then
            match ownedLedger.Complete t with
            | Ok() -> ()
            | Error e -> refused e
        else
            match Ledger.complete t ledger with
            | Ok l -> ledger <- l
            | Error e -> refused e

    let apply (effects: Effects) =
        for e in effects.Ledger do
            match e with
            | Complete t -> complete t
            | Fork(t, n) when owned ->
                match ownedLedger.Fork(n, t) with
                | Ok() -> ()
                | Error e -> refused e
            | Fork(t, n) ->
                match Ledger.fork n t ledger with
                | Ok l -> ledger <- l
                | Error e -> refused e

        for o in effects.Outputs do
            for t in o.Tokens do
                complete t

        for f in effects.Failures do
            raise (InvalidOperationException($"Stage '{f.Stage}' failed in the core benchmark.", f.Error))

        for s in effects.Sinks do
            let t = s.Write s.Envelope.Value

            if not t.IsCompletedSuccessfully then
                failwith "The core benchmark's sinks complete at once."

            sunk <- sunk + 1L

            for t in s.Envelope.Tokens do
                complete t

        for c in effects.Calls do
            calls.Enqueue c

    // Apart, so that the JIT inlines PipeRun.push here and drops its result tuple as it does in
    // PartitionWorker before the owned mode (pipe-core bench (b): 32 B per message).
    let pushValue envelope =
        let run', effects = PipeRun.push now (Message envelope) run
        run <- run'
        apply effects

    let deliver position =
        if owned then
            match ownedLedger.Deliver position with
            | Ok token -> token
            | Error e -> refused e
        else
            match Ledger.deliver position ledger with
            | Ok(struct (l, token)) ->
                ledger <- l
                token
            | Error e -> refused e

    /// Messages and batches that reached the sink.
    member _.Sunk = sunk

    /// The partition's commit point.
    member _.CommitPoint =
        if owned then
            ownedLedger.CommitPoint tp |> ValueOption.defaultValue -1L
        else
            Ledger.commitPoint tp ledger |> ValueOption.defaultValue -1L

    /// Delivers the message at `offset` and pushes it, then resumes every call started.
    member _.Deliver(offset: int64, key: string, value: byte[]) =
        let position = { TopicPartition = tp; Offset = offset }

        let token = deliver position

        let envelope: Envelope<obj> = {
            Value = (value :> obj)
            Tokens = [ token ]
            Key = key
            Position = position
            Timestamp = now
        }

        if owned then
            apply (PipeRun.pushMessageOwned now envelope run)
        else
            pushValue envelope

        // Immediate answers: every call started. In flight: one answer per message (as many
        // leave as arrive) once `inFlight` calls are started.
        let mutable answers =
            if inFlight = 0 then Int32.MaxValue
            elif calls.Count >= inFlight then 1
            else 0

        while answers > 0 && calls.Count > 0 do
            answers <- answers - 1
            let c = calls.Dequeue()
            let result = (c.Run c.Envelope.Value).Result

            if owned then
                apply (PipeRun.resumeOwned now c.Id (Ok result) run)
            else
                let run', effects = PipeRun.resume now c.Id (Ok result) run
                run <- run'
                apply effects

    /// Pushes a Tick a millisecond later.
    member _.Tick() =
        now <- now.AddMilliseconds 1.0

        if owned then
            apply (PipeRun.pushOwned now Tick run)
        else
            let run', effects = PipeRun.push now Tick run
            run <- run'
            apply effects

/// The input: 10,000 values and 1,000 keys, reused in turn (a consumer would hand over new arrays:
/// that allocation is the client's, not the core's).
type private CoreInput = { Values: byte[][]; Keys: string[] }

let private input =
    lazy
        {
            Values = Array.init 10_000 (fun i -> Text.Encoding.UTF8.GetBytes(value i))
            Keys = Array.init Keys key
        }

/// One run of `messages` messages through a fresh loop: ns per message, bytes allocated per message.
let private once (pipe: Pipe<byte[], Sunk>, inFlight: int, owned: bool) (messages: int) =
    let input = input.Force()
    let loop = Loop(pipe, inFlight, owned)
    let mutable checksum = 0L
    let allocated = GC.GetAllocatedBytesForCurrentThread()
    let clock = Stopwatch.StartNew()

    for i in 0 .. messages - 1 do
        loop.Deliver(int64 i, input.Keys[i % Keys], input.Values[i % input.Values.Length])

        if i % PublishEvery = 0 then
            checksum <- checksum + loop.CommitPoint

        if i % TickEvery = TickEvery - 1 then
            loop.Tick()

    clock.Stop()
    let bytes = GC.GetAllocatedBytesForCurrentThread() - allocated

    if loop.Sunk = 0L || checksum < 0L then
        failwith "The core benchmark's pipe sank nothing."

    struct (clock.Elapsed.TotalSeconds * 1e9 / float messages, float bytes / float messages)

/// Rounds per pipe; the fastest counts (the machine is shared). 3.
[<Literal>]
let Rounds = 3

/// Runs each pipe over `messages` messages (after a warm-up); returns the figures. The rows without
/// "value" push an owned run in place, as the Kafka runtime does; the "value" rows the public value
/// API (a new PipeRun per push), for comparison.
let run (messages: int) () =
    let pipes = [
        "map_filter", "(b) map → filter → sink", (mapFilterPipe, 0, true)
        "demux_aggregate",
        "(c) map → demux (1,000 keys) → aggregate (100) → sink",
        (demuxAggregatePipe, 0, true)
        "async_demux", "(e) map → demux (1,000 keys) → mapAsync 1 → sink", (asyncDemuxPipe, 0, true)
        // As on Kafka: every key's call in flight, its next input waiting behind it.
        "async_demux_inflight", "(e) the same, 1,000 calls in flight", (asyncDemuxPipe, Keys, true)
        "value_map_filter", "(b) value API", (mapFilterPipe, 0, false)
        "value_demux_aggregate", "(c) value API", (demuxAggregatePipe, 0, false)
        "value_async_demux", "(e) value API", (asyncDemuxPipe, 0, false)
        "value_async_demux_inflight", "(e) value API, 1,000 calls in flight", (asyncDemuxPipe, Keys, false)
    ]

    printfn "  %d messages per round, best of %d rounds" messages Rounds

    [
        for name, title, pipe in pipes do
            once pipe (min messages 200_000) |> ignore

            let sampler =
                if isNull (Environment.GetEnvironmentVariable "KFLOW_BENCH_ALLOCS") then
                    None
                else
                    Some(new GcTrace.AllocationSampler())

            let rounds = List.init Rounds (fun _ -> once pipe messages)

            match sampler with
            | Some s ->
                let top, _, objects = s.Take 18

                for kv in top do
                    let struct (n, o) = kv.Value
                    printfn "      %6d  %5.2f obj/msg  %s" n (o / float (messages * Rounds)) kv.Key

                printfn "      about %.1f objects per message in all" (objects / float (messages * Rounds))
                s.Dispose()
            | None -> ()

            let ns = rounds |> List.map (fun struct (ns, _) -> ns) |> List.min
            let bytes = rounds |> List.map (fun struct (_, b) -> b) |> List.min
            printfn "  %-58s %8.0f ns/msg %8.0f bytes/msg" title ns bytes
            $"core_{name}_ns_per_msg", ns
            $"core_{name}_bytes_per_msg", bytes
    ]
