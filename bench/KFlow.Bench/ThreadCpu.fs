// CPU time per thread of this process (Linux /proc), to show where a benchmark's time goes:
// the consumer thread, librdkafka's broker threads, the mock cluster's threads, the thread pool.
module KFlow.Bench.ThreadCpu

open System
open System.IO

/// CPU seconds (user + system) by thread id and name; empty where /proc is missing.
let snapshot () : Map<int, string * float> =
    let dir = "/proc/self/task"

    if not (Directory.Exists dir) then
        Map.empty
    else
        let tick = 100.0 // USER_HZ on Linux

        Directory.GetDirectories dir
        |> Array.choose (fun d ->
            try
                let stat = File.ReadAllText(Path.Combine(d, "stat"))
                // "tid (name) state ..." : the name may hold spaces, so split after the last ')'.
                let close = stat.LastIndexOf ')'
                let name = stat.Substring(stat.IndexOf '(' + 1, close - stat.IndexOf '(' - 1)
                let fields = stat.Substring(close + 2).Split ' '
                let cpu = (float fields[11] + float fields[12]) / tick
                Some(int (Path.GetFileName d), (name, cpu))
            with _ ->
                None)
        |> Map.ofArray

/// Prints the threads that used the most CPU between two snapshots, grouped by name.
let print (title: string) (before: Map<int, string * float>) (after: Map<int, string * float>) =
    let used =
        after
        |> Map.toList
        |> List.map (fun (tid, (name, cpu)) ->
            let start =
                match Map.tryFind tid before with
                | Some(_, c) -> c
                | None -> 0.0

            name, cpu - start)
        |> List.groupBy fst
        |> List.map (fun (name, xs) -> name, List.length xs, xs |> List.sumBy snd)
        |> List.filter (fun (_, _, cpu) -> cpu >= 0.05)
        |> List.sortByDescending (fun (_, _, cpu) -> cpu)

    printfn "    %s, CPU seconds by thread name:" title

    for name, count, cpu in used do
        printfn "      %-22s %2d thread(s) %6.2f s" name count cpu

/// Runs `f`, sampling every thread's CPU time every 100 ms meanwhile (threads that end before `f`
/// returns, like a closed consumer's, keep their last sample); prints the CPU each thread name used.
let track (title: string) (f: unit -> 'a) =
    let before = snapshot ()

    let latest =
        System.Collections.Concurrent.ConcurrentDictionary<int, string * float>()

    use stop = new System.Threading.CancellationTokenSource()

    let sampler =
        System.Threading.Tasks.Task.Run(fun () ->
            while not stop.IsCancellationRequested do
                for KeyValue(tid, v) in snapshot () do
                    latest[tid] <- v

                System.Threading.Thread.Sleep 100)

    let result = f ()
    stop.Cancel()
    sampler.Wait()

    for KeyValue(tid, v) in snapshot () do
        latest[tid] <- v

    print title before (latest |> Seq.map (fun kv -> kv.Key, kv.Value) |> Map.ofSeq)
    result
