// Finding what a benchmark allocates: an allocation sampler (the runtime's allocation events, one per
// ~100 KB allocated, naming the type) used by the pipe-core bench (KFLOW_BENCH_ALLOCS=1) and, with
// KFLOW_BENCH_GCTRACE=1, over the whole process (printed at exit). Off by default: listening costs time.
module KFlow.Bench.GcTrace

open System
open System.Collections.Concurrent
open System.Diagnostics.Tracing

/// GC allocation samples by type. Each sample stands for the ~100 KB allocated since the last one;
/// divided by the sampled object's size, it estimates how many objects of its type were allocated (a
/// collection's cost grows with the number of objects, not only bytes).
[<Sealed>]
type AllocationSampler() =
    inherit EventListener()
    let counts = ConcurrentDictionary<string, struct (int * float)>()

    override _.OnEventSourceCreated(source) =
        if source.Name = "Microsoft-Windows-DotNETRuntime" then
            // GC keyword (0x1), verbose: AllocationTick.
            base.EnableEvents(
                source,
                EventLevel.Verbose,
                LanguagePrimitives.EnumOfValue<int64, EventKeywords> 1L
            )

    override _.OnEventWritten(e) =
        if e.EventName = "GCAllocationTick_V4" || e.EventName = "GCAllocationTick_V3" then
            let names = nonNull e.PayloadNames
            let payload = nonNull e.Payload

            let field name =
                names |> Seq.tryFindIndex ((=) name) |> Option.map (fun i -> payload[i])

            match field "TypeName" with
            | Some name ->
                let amount =
                    field "AllocationAmount64"
                    |> Option.map (fun a -> float (Convert.ToUInt64 a))
                    |> Option.defaultValue 100_000.0

                // V4 carries the sampled object's size; without it no estimate (0).
                let objects =
                    match field "ObjectSize" |> Option.map Convert.ToUInt64 with
                    | Some size when size > 0UL -> amount / float size
                    | _ -> 0.0

                counts.AddOrUpdate(
                    string name,
                    struct (1, objects),
                    fun _ (struct (n, o)) -> struct (n + 1, o + objects)
                )
                |> ignore
            | None -> ()

    /// The sampled types, most frequent first (at most `top`), the samples of all types and the
    /// estimated objects of all types; forgets them.
    member _.Take(top: int) =
        let all = counts |> List.ofSeq

        let most =
            all
            |> List.sortByDescending (fun kv -> let struct (n, _) = kv.Value in n)
            |> List.truncate top

        counts.Clear()

        most,
        all |> List.sumBy (fun kv -> let struct (n, _) = kv.Value in n),
        all |> List.sumBy (fun kv -> let struct (_, o) = kv.Value in o)

/// The environment variable that samples the whole process ("1").
[<Literal>]
let Variable = "KFLOW_BENCH_GCTRACE"

/// Starts sampling the whole process if KFLOW_BENCH_GCTRACE is 1; the 40 most sampled types are
/// printed at exit with their share of the samples.
let start () =
    if Environment.GetEnvironmentVariable Variable = "1" then
        let sampler = new AllocationSampler()

        AppDomain.CurrentDomain.ProcessExit.Add(fun _ ->
            let most, samples, objects = sampler.Take 40
            let total = max 1 samples

            eprintfn "Allocation samples by type (%s=1; %.0f objects estimated in all):" Variable objects

            for kv in most do
                let struct (n, _) = kv.Value
                eprintfn "%6.2f%% %s" (100.0 * float n / float total) kv.Key)
