// A diagnostic for finding what a benchmark allocates: with KFLOW_BENCH_GCTRACE=1 the process samples
// the runtime's allocation events (one per ~100 KB allocated, naming the type) and prints, at exit,
// the types with their share of the samples. Off by default: listening costs time.
module KFlow.Bench.GcTrace

open System
open System.Collections.Concurrent
open System.Diagnostics.Tracing

/// Counts the runtime's GCAllocationTick events by the type they name.
[<Sealed>]
type AllocationSampler() =
    inherit EventListener()
    let samples = ConcurrentDictionary<string, int64>()

    /// Samples per type name so far.
    member _.Samples = samples

    override this.OnEventSourceCreated(source) =
        // Keyword 0x1 is GC; allocation ticks are written at Verbose level.
        if source.Name = "Microsoft-Windows-DotNETRuntime" then
            this.EnableEvents(
                source,
                EventLevel.Verbose,
                LanguagePrimitives.EnumOfValue<int64, EventKeywords> 1L
            )

    override _.OnEventWritten(e) =
        if string e.EventName = "GCAllocationTick_V4" then
            let names = nonNull e.PayloadNames
            let payload = nonNull e.Payload
            let name = string payload[names.IndexOf "TypeName"]
            samples.AddOrUpdate(name, 1L, fun _ n -> n + 1L) |> ignore

/// The environment variable that turns the sampler on ("1").
[<Literal>]
let Variable = "KFLOW_BENCH_GCTRACE"

/// Starts sampling if KFLOW_BENCH_GCTRACE is 1; the 40 most sampled types are printed at exit.
let start () =
    if Environment.GetEnvironmentVariable Variable = "1" then
        let sampler = new AllocationSampler()

        AppDomain.CurrentDomain.ProcessExit.Add(fun _ ->
            let total = max 1L (Seq.sum sampler.Samples.Values)
            eprintfn "Allocation samples by type (%s=1; share of %d samples):" Variable total

            for KeyValue(name, n) in sampler.Samples |> Seq.sortByDescending _.Value |> Seq.truncate 40 do
                eprintfn "%6.2f%% %s" (100.0 * float n / float total) name)
