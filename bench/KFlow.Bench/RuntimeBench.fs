// The runtime benchmarks on one embedded cluster and one input, one contender after the other:
// (a) raw Confluent.Kafka loop, (b) KFlow map → filter, (c) KFlow map → demux → aggregate,
// (d) Streamiz.Kafka.Net, (e) async demux against its ideal, (f) peak memory over a backlog, the
// last in a child process so that only the workflow's memory is counted (not the cluster's log).
module KFlow.Bench.RuntimeBench

open System
open System.Diagnostics
open System.IO
open System.Reflection
open KFlow.Testing
open KFlow.Bench.RuntimeInput

/// Partitions of the input topic. 8.
[<Literal>]
let Partitions = 8

/// Messages of the input unless `--messages N` says otherwise. 1,000,000.
[<Literal>]
let DefaultMessages = 1_000_000

/// Longest run of (f): the 1,000 msg/s sink would need 1,000 s for the whole backlog, so the child
/// runs this long with the whole backlog waiting (memory that grew with the backlog would show
/// within seconds). 60 s.
let backlogDuration = TimeSpan.FromSeconds 60.0

/// The line the child prints with its peak working set.
let private peakPrefix = "backlog_peak_memory_mb="

/// The child's entry point (`--backlog-child BOOTSTRAP TOPIC END0,END1,...`): runs (f) and prints
/// its peak working set. Returns the exit code.
let backlogChild (bootstrap: string) (topic: string) (ends: string) =
    let endOffsets = ends.Split ',' |> Array.map int64

    let input = {
        BootstrapServers = bootstrap
        Topic = topic
        Partitions = endOffsets.Length
        Messages = int (Array.sum endOffsets)
        EndOffsets = endOffsets
    }

    let start = Process.GetCurrentProcess().WorkingSet64

    if KFlowPipes.backlog input backlogDuration then
        use self = Process.GetCurrentProcess()
        self.Refresh()
        printfn "  child working set at start: %.1f MB" (float start / 1048576.0)
        printfn "%s%.1f" peakPrefix (float self.PeakWorkingSet64 / 1048576.0)
    else
        printfn "backlog: not wired"

    0

/// Runs (f) in a child process over the input; its peak working set in MB, None when not wired.
let backlogInChild (input: Input) =
    let dll = Assembly.GetExecutingAssembly().Location
    let host = Environment.ProcessPath |> nonNull

    let psi =
        ProcessStartInfo(host, UseShellExecute = false, RedirectStandardOutput = true)

    if Path.GetFileNameWithoutExtension host = "dotnet" then
        psi.ArgumentList.Add dll

    for a in
        [
            "--backlog-child"
            input.BootstrapServers
            input.Topic
            input.EndOffsets |> Array.map string |> String.concat ","
        ] do
        psi.ArgumentList.Add a

    use child = Process.Start psi |> nonNull
    let output = child.StandardOutput.ReadToEnd()
    child.WaitForExit()
    printf "%s" output

    if child.ExitCode <> 0 then
        failwithf "The backlog child process failed with exit code %d." child.ExitCode

    output.Split '\n'
    |> Array.tryPick (fun line ->
        if line.StartsWith peakPrefix then
            Some(float (line.Substring peakPrefix.Length))
        else
            None)

let private optional key (figure: float option) =
    figure |> Option.map (fun v -> key, v) |> Option.toList

let private ratio key (a: float option) (b: float option) =
    match a, b with
    | Some a, Some b -> [ key, a / b ]
    | _ -> []

let private show (name: string) (figure: float option) (unit: string) =
    match figure with
    | Some v -> printfn "  %-40s %12.0f %s" name v unit
    | None -> printfn "  %-40s %12s" name "not wired"

/// Starts a cluster and produces the input; prints the produce rate.
let private prepare (messages: int) =
    let cluster = EmbeddedKafka.start 1
    printfn "  producing %d messages of ~200 bytes over %d partitions..." messages Partitions
    let input, produceRate = produce cluster "bench-input" Partitions messages
    printfn "  %-40s %12.0f msgs/s" "produce (input)" produceRate
    cluster, input, produceRate

/// Runs a contender, printing the CPU its process's threads used meanwhile.
let private measured (name: string) (contender: unit -> 'a) = ThreadCpu.track name contender

/// (a), (b) and (d) with the consumer settings of `fetching`; their figures, keyed with the
/// fetching's suffix ("" for the fair run, "_client_defaults" for the other).
let private mapFilterFigures (fetching: Fetching) (input: Input) =
    let tag = suffix fetching
    let raw = measured $"(a){tag}" (fun () -> RawConsumerBench.run fetching input)
    show $"(a) raw Confluent.Kafka loop{tag}" (Some raw) "msgs/s"
    let mapFilter = measured $"(b){tag}" (fun () -> KFlowPipes.mapFilter fetching input)
    show $"(b) KFlow map → filter → sink{tag}" mapFilter "msgs/s"
    let streamiz = measured $"(d){tag}" (fun () -> StreamizBench.run fetching input)
    show $"(d) Streamiz map → filter → peek{tag}" (Some streamiz) "msgs/s"

    let figures =
        [
            "raw_consumer_msgs_per_s", raw
            "streamiz_msgs_per_s", streamiz
            "ratio_raw_vs_streamiz", raw / streamiz
        ]
        @ optional "kflow_map_filter_msgs_per_s" mapFilter
        @ ratio "ratio_map_filter_vs_raw" mapFilter (Some raw)
        @ ratio "ratio_map_filter_vs_streamiz" mapFilter (Some streamiz)

    raw, figures |> List.map (fun (key, v) -> key + tag, v)

/// (a), (b) and (d) alone (`--only map-filter`): its own cluster and input; the run with
/// librdkafka's fetch.queue.backoff.ms first, then the fair run. The throttled run goes first because
/// it also warms each contender up (JIT compilation and tiering of its code): it waits on fetches,
/// so the compiling costs it little, where the first KFlow run of a process otherwise paid ~1 µs of
/// CPU per message more than a later one over 500,000 messages.
let runMapFilter (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    let _, defaults = mapFilterFigures ClientDefaults input
    let _, fair = mapFilterFigures Unthrottled input
    fair @ defaults

/// (e) over the input with its step on Task.Delay (the figure against the ideal, as specified) and
/// on PreciseDelay (a step that really lasts 5 ms here), with each timer's own ceiling: 1,000 chains
/// of sequential 5 ms waits with nothing else running.
let private asyncFigures (input: Input) =
    let perKey = 200

    let ceiling timer =
        AsyncStep.ceiling timer Keys perKey KFlowPipes.asyncStep

    let taskDelayCeiling = ceiling AsyncStep.TaskDelay
    show "(e) timer ceiling, Task.Delay" (Some taskDelayCeiling) "waits/s"
    let preciseCeiling = ceiling AsyncStep.Precise
    show "(e) timer ceiling, PreciseDelay" (Some preciseCeiling) "waits/s"
    let precise = KFlowPipes.asyncDemux AsyncStep.Precise None input
    show "(e) KFlow async demux, PreciseDelay" (precise |> Option.map _.Achieved) "msgs/s"
    let taskDelay = KFlowPipes.asyncDemux AsyncStep.TaskDelay None input
    show "(e) KFlow async demux, Task.Delay" (taskDelay |> Option.map _.Achieved) "msgs/s"
    show "    ideal" (taskDelay |> Option.map _.Ideal) "msgs/s"

    let fraction (f: KFlowPipes.AsyncFigure option) =
        f |> Option.map (fun f -> f.Achieved / f.Ideal)

    // The same with MaxConcurrentCalls below the 1,000 keys: the ideal is then cap × 200 msg/s,
    // below the source's own rate, so the runtime's share shows.
    let capped (cap: int) =
        let precise = KFlowPipes.asyncDemux AsyncStep.Precise (Some cap) input
        show $"(e) KFlow async demux, cap {cap}, PreciseDelay" (precise |> Option.map _.Achieved) "msgs/s"
        let taskDelay = KFlowPipes.asyncDemux AsyncStep.TaskDelay (Some cap) input
        show $"(e) KFlow async demux, cap {cap}, Task.Delay" (taskDelay |> Option.map _.Achieved) "msgs/s"
        show "    ideal" (taskDelay |> Option.map _.Ideal) "msgs/s"

        optional $"async_demux_cap{cap}_msgs_per_s" (taskDelay |> Option.map _.Achieved)
        @ optional $"async_demux_cap{cap}_fraction_of_ideal" (fraction taskDelay)
        @ optional $"async_demux_cap{cap}_precise_msgs_per_s" (precise |> Option.map _.Achieved)
        @ optional $"async_demux_cap{cap}_precise_fraction_of_ideal" (fraction precise)

    [
        "async_timer_ceiling_task_delay_waits_per_s", taskDelayCeiling
        "async_timer_ceiling_precise_waits_per_s", preciseCeiling
    ]
    @ optional "async_demux_msgs_per_s" (taskDelay |> Option.map _.Achieved)
    @ optional "async_demux_fraction_of_ideal" (fraction taskDelay)
    @ optional "async_demux_precise_msgs_per_s" (precise |> Option.map _.Achieved)
    @ optional "async_demux_precise_fraction_of_ideal" (fraction precise)
    @ capped 100
    @ capped 250

/// (a), (b) and (d) with librdkafka's fetch.queue.backoff.ms (`_client_defaults` keys; first, as a
/// warm-up too, see runMapFilter), then (a) to (f) over `messages` messages, every contender with
/// the fair (unthrottled) consumer settings. Returns the figures for bench-results.json.
let run (messages: int) () =
    let cluster, input, produceRate = prepare messages
    use _ = cluster
    let _, defaults = mapFilterFigures ClientDefaults input
    let raw, mapFilter = mapFilterFigures Unthrottled input
    let demuxAggregate = measured "(c)" (fun () -> KFlowPipes.demuxAggregate input)
    show "(c) KFlow map → demux → aggregate → sink" demuxAggregate "msgs/s"
    let asyncDemux = asyncFigures input
    let peak = backlogInChild input
    show "(f) peak memory over the backlog" peak "MB"

    [ "produce_msgs_per_s", produceRate ]
    @ mapFilter
    @ optional "kflow_demux_aggregate_msgs_per_s" demuxAggregate
    @ ratio "ratio_demux_aggregate_vs_raw" demuxAggregate (Some raw)
    @ asyncDemux
    @ optional "backlog_peak_memory_mb" peak
    @ defaults

/// (c) alone (`--only demux-aggregate`): its own cluster and input.
let runDemuxAggregate (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    let demuxAggregate = measured "(c)" (fun () -> KFlowPipes.demuxAggregate input)
    show "(c) KFlow map → demux → aggregate → sink" demuxAggregate "msgs/s"
    optional "kflow_demux_aggregate_msgs_per_s" demuxAggregate

/// (e) alone (`--only async-demux`): its own cluster and input.
let runAsyncDemux (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    asyncFigures input

/// (f) alone (`--only backlog-memory`): its own cluster and input, the workflow in a child process.
let runBacklog (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    let peak = backlogInChild input
    show "(f) peak memory over the backlog" peak "MB"
    optional "backlog_peak_memory_mb" peak
