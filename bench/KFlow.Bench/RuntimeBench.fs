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

/// Rounds of the fair contenders, run alternated ((a), (b), (d), (c), then again): the best round
/// of each gives the main keys, the median the `*_median` keys. On a shared machine the least
/// disturbed round is the best estimate of what a contender costs; one round alone moved b/d
/// between 1.95 and 2.74 from run to run. 3.
[<Literal>]
let Rounds = 3

/// (a), (b) and (d) once with the consumer settings of `fetching`; their figures, keyed with the
/// fetching's suffix ("_client_defaults": this run is not repeated, it serves as the warm-up).
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

    figures |> List.map (fun (key, v) -> key + tag, v)

/// A fair contender run in rounds: its name in the table, its JSON key, its run.
[<NoEquality; NoComparison>]
type private Contender = {
    Name: string
    Key: string
    Run: Input -> float option
}

let private rawContender = {
    Name = "(a) raw Confluent.Kafka loop"
    Key = "raw_consumer_msgs_per_s"
    Run = fun input -> Some(RawConsumerBench.run Unthrottled input)
}

let private mapFilterContender = {
    Name = "(b) KFlow map → filter → sink"
    Key = "kflow_map_filter_msgs_per_s"
    Run = KFlowPipes.mapFilter Unthrottled
}

let private streamizContender = {
    Name = "(d) Streamiz map → filter → peek"
    Key = "streamiz_msgs_per_s"
    Run = fun input -> Some(StreamizBench.run Unthrottled input)
}

let private demuxAggregateContender = {
    Name = "(c) KFlow map → demux → aggregate → sink"
    Key = "kflow_demux_aggregate_msgs_per_s"
    Run = KFlowPipes.demuxAggregate
}

/// The middle value (the mean of the two middle ones for an even count).
let private median (xs: float list) =
    let sorted = List.sort xs
    let n = sorted.Length

    if n % 2 = 1 then
        sorted[n / 2]
    else
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0

/// Runs the contenders `Rounds` times, alternated, with the fair consumer settings; prints each
/// round, then each contender's best and median; returns the best rates by key, the medians under
/// `<key>_median`, and the ratios of the bests (and of the medians, `<ratio>_median`).
let private fairRounds (contenders: Contender list) (input: Input) =
    let rounds =
        List.init Rounds (fun r ->
            printfn "  round %d of %d" (r + 1) Rounds

            contenders
            |> List.map (fun c ->
                let rate = measured $"{c.Name}, round {r + 1}" (fun () -> c.Run input)
                show c.Name rate "msgs/s"
                c.Key, rate))

    let rates key =
        rounds |> List.choose (List.tryPick (fun (k, v) -> if k = key then v else None))

    let statOf (f: float list -> float) key =
        match rates key with
        | [] -> None
        | xs -> Some(f xs)

    printfn "  best and median of %d rounds:" Rounds

    for c in contenders do
        match rates c.Key with
        | [] -> show c.Name None ""
        | xs ->
            let all = xs |> List.map (sprintf "%.0f") |> String.concat "; "
            printfn "  %-40s %12.0f msgs/s best, %.0f median (%s)" c.Name (List.max xs) (median xs) all

    let figures (f: float list -> float) (tag: string) =
        let rate = statOf f
        let raw = rate rawContender.Key
        let mapFilter = rate mapFilterContender.Key
        let streamiz = rate streamizContender.Key
        let demuxAggregate = rate demuxAggregateContender.Key

        (contenders |> List.collect (fun c -> optional (c.Key + tag) (rate c.Key)))
        @ ratio $"ratio_raw_vs_streamiz{tag}" raw streamiz
        @ ratio $"ratio_map_filter_vs_raw{tag}" mapFilter raw
        @ ratio $"ratio_map_filter_vs_streamiz{tag}" mapFilter streamiz
        @ ratio $"ratio_demux_aggregate_vs_raw{tag}" demuxAggregate raw

    let best = figures List.max ""
    let medians = figures median "_median"

    for key, v in best do
        if key.StartsWith "ratio_" then
            let m =
                medians
                |> List.tryPick (fun (k, m) -> if k = key + "_median" then Some m else None)

            printfn "  %-40s %12.2f best, %.2f median" key v (defaultArg m nan)

    best @ medians

/// (a), (b) and (d) alone (`--only map-filter`): its own cluster and input; the run with
/// librdkafka's fetch.queue.backoff.ms first, then `Rounds` fair rounds. The throttled run goes first
/// because it also warms each contender up (JIT compilation and tiering of its code): it waits on
/// fetches, so the compiling costs it little, where the first KFlow run of a process otherwise paid
/// ~1 µs of CPU per message more than a later one over 500,000 messages.
let runMapFilter (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    let defaults = mapFilterFigures ClientDefaults input
    let fair = fairRounds [ rawContender; mapFilterContender; streamizContender ] input
    fair @ defaults

/// Messages of each capped (e) run: at cap × 200 msg/s the whole input would take 50-90 s a run;
/// 200,000 messages take 4-10 s and show the same rate. 200,000.
let CappedMessages = 200_000

/// (e) over the input with its step on PreciseDelay (a step that really lasts 5 ms here: the main
/// keys, against the ideal as specified) and on Task.Delay (`*_task_delay_*` keys: 5 ms on a 4 ms
/// coarse clock lasts ~8 ms), with each timer's own ceiling: 1,000 chains of sequential 5 ms waits
/// with nothing else running, which bounds what any runtime reaches with that timer.
let private asyncFigures (input: Input) =
    let perKey = 200

    let ceiling timer =
        AsyncStep.ceiling timer Keys perKey KFlowPipes.asyncStep

    let taskDelayCeiling = ceiling AsyncStep.TaskDelay
    show "(e) timer ceiling, Task.Delay" (Some taskDelayCeiling) "waits/s"
    let preciseCeiling = ceiling AsyncStep.Precise
    show "(e) timer ceiling, PreciseDelay" (Some preciseCeiling) "waits/s"

    let fraction (f: KFlowPipes.AsyncFigure option) =
        f |> Option.map (fun f -> f.Achieved / f.Ideal)

    let report (label: string) (f: KFlowPipes.AsyncFigure option) (timerCeiling: float) =
        match f with
        | Some f ->
            printfn
                "  %-40s %12.0f msgs/s, %.2f of the ideal %.0f (the timer alone allows %.2f)"
                label
                f.Achieved
                (f.Achieved / f.Ideal)
                f.Ideal
                (min 1.0 (timerCeiling / f.Ideal))
        | None -> show label None ""

    let precise = KFlowPipes.asyncDemux AsyncStep.Precise None None input
    report "(e) KFlow async demux, PreciseDelay" precise preciseCeiling
    let taskDelay = KFlowPipes.asyncDemux AsyncStep.TaskDelay None None input
    report "(e) KFlow async demux, Task.Delay" taskDelay taskDelayCeiling

    // The same with MaxConcurrentCalls below the 1,000 keys: the ideal is then cap × 200 msg/s,
    // below the source's own rate, so the runtime's share shows.
    let capped (cap: int) =
        let limit = Some CappedMessages
        let precise = KFlowPipes.asyncDemux AsyncStep.Precise (Some cap) limit input
        report $"(e) cap {cap}, PreciseDelay" precise preciseCeiling
        let taskDelay = KFlowPipes.asyncDemux AsyncStep.TaskDelay (Some cap) limit input
        report $"(e) cap {cap}, Task.Delay" taskDelay taskDelayCeiling

        optional $"async_demux_cap{cap}_msgs_per_s" (precise |> Option.map _.Achieved)
        @ optional $"async_demux_cap{cap}_fraction_of_ideal" (fraction precise)
        @ optional $"async_demux_cap{cap}_task_delay_msgs_per_s" (taskDelay |> Option.map _.Achieved)
        @ optional $"async_demux_cap{cap}_task_delay_fraction_of_ideal" (fraction taskDelay)

    let ideal = precise |> Option.orElse taskDelay |> Option.map _.Ideal

    [
        "async_timer_ceiling_task_delay_waits_per_s", taskDelayCeiling
        "async_timer_ceiling_precise_waits_per_s", preciseCeiling
    ]
    @ optional "async_demux_ideal_msgs_per_s" ideal
    @ optional "async_demux_msgs_per_s" (precise |> Option.map _.Achieved)
    @ optional "async_demux_fraction_of_ideal" (fraction precise)
    @ optional "async_demux_task_delay_msgs_per_s" (taskDelay |> Option.map _.Achieved)
    @ optional "async_demux_task_delay_fraction_of_ideal" (fraction taskDelay)
    @ optional
        "async_demux_task_delay_ceiling_fraction_of_ideal"
        (ideal |> Option.map (fun i -> taskDelayCeiling / i))
    @ capped 100
    @ capped 250

/// (a), (b) and (d) with librdkafka's fetch.queue.backoff.ms (`_client_defaults` keys; first, as a
/// warm-up too, see runMapFilter), then `Rounds` fair rounds of (a), (b), (d) and (c), then (e) and
/// (f), every contender with the fair (unthrottled) consumer settings. Returns the figures for
/// bench-results.json.
let run (messages: int) () =
    let cluster, input, produceRate = prepare messages
    use _ = cluster
    let defaults = mapFilterFigures ClientDefaults input

    let fair =
        fairRounds [ rawContender; mapFilterContender; streamizContender; demuxAggregateContender ] input

    let asyncDemux = asyncFigures input
    let peak = backlogInChild input
    show "(f) peak memory over the backlog" peak "MB"

    [ "produce_msgs_per_s", produceRate ]
    @ fair
    @ asyncDemux
    @ optional "backlog_peak_memory_mb" peak
    @ defaults

/// (c) alone (`--only demux-aggregate`): its own cluster and input, `Rounds` rounds.
let runDemuxAggregate (messages: int) () =
    let cluster, input, _ = prepare messages
    use _ = cluster
    fairRounds [ demuxAggregateContender ] input

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
