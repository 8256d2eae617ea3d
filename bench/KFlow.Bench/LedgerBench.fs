// The ledger micro-benchmark: deliver + complete with a random completion order among 10,000 open
// offsets (offsets with occasional gaps), the immutable Ledger against the mutable SortedSet
// baseline, in the same process, runs interleaved.
module KFlow.Bench.LedgerBench

open System
open System.Diagnostics
open KFlow

/// What one benchmark run is made of.
type Workload = {
    /// Open offsets kept at all times. Default 10,000.
    Window: int
    /// Messages per measured run; each is one deliver and one complete (two operations).
    Messages: int
    /// Which open token each message completes (an index into the window).
    Picks: int[]
    /// The offset step after each delivery: 1, or 2 now and then (a transaction marker).
    Steps: int64[]
}

/// A seeded workload, the same for both implementations.
let workload (window: int) (messages: int) =
    let random = Random 42

    {
        Window = window
        Messages = messages
        Picks = Array.init messages (fun _ -> random.Next window)
        Steps = Array.init messages (fun _ -> if random.Next 16 = 0 then 2L else 1L)
    }

let private tp = TopicPartition.create "bench" 0

let private refused (e: LedgerError) =
    failwithf "The benchmark's ledger refused an operation: %A" e

/// One run of the immutable ledger; returns seconds, bytes allocated per operation, and a checksum
/// of commit points with the final one.
let runLedger (w: Workload) =
    let tokens = Array.zeroCreate<Token> w.Window
    let mutable ledger = Ledger.empty |> Ledger.assign tp 0L
    let mutable offset = 0L

    for i in 0 .. w.Window - 1 do
        match Ledger.deliver { TopicPartition = tp; Offset = offset } ledger with
        | Ok(struct (l, t)) ->
            ledger <- l
            tokens[i] <- t
        | Error e -> refused e

        offset <- offset + 1L

    let mutable checksum = 0L
    let allocated = GC.GetAllocatedBytesForCurrentThread()
    let watch = Stopwatch.StartNew()

    for i in 0 .. w.Messages - 1 do
        let slot = w.Picks[i]

        match Ledger.complete tokens[slot] ledger with
        | Ok l -> ledger <- l
        | Error e -> refused e

        match Ledger.deliver { TopicPartition = tp; Offset = offset } ledger with
        | Ok(struct (l, t)) ->
            ledger <- l
            tokens[slot] <- t
        | Error e -> refused e

        offset <- offset + w.Steps[i]

        if i &&& 63 = 0 then
            checksum <- checksum + (Ledger.commitPoint tp ledger |> ValueOption.get)

    watch.Stop()

    let bytesPerOp =
        float (GC.GetAllocatedBytesForCurrentThread() - allocated)
        / float (2 * w.Messages)

    watch.Elapsed.TotalSeconds,
    bytesPerOp,
    struct (checksum, (Ledger.commitPoint tp ledger |> ValueOption.get))

/// One run of a ledger updated in place (the mutable baseline, or the OwnedLedger the runtime's
/// partition loops use); returns what runLedger returns.
let inline private runInPlace
    (ledger:
        ^L
            when ^L: (member Deliver: Position -> Result<Token, LedgerError>)
            and ^L: (member Complete: Token -> Result<unit, LedgerError>)
            and ^L: (member CommitPoint: TopicPartition -> int64 voption))
    (w: Workload)
    =
    let tokens = Array.zeroCreate<Token> w.Window
    let mutable offset = 0L

    for i in 0 .. w.Window - 1 do
        match ledger.Deliver { TopicPartition = tp; Offset = offset } with
        | Ok t -> tokens[i] <- t
        | Error e -> refused e

        offset <- offset + 1L

    let mutable checksum = 0L
    let allocated = GC.GetAllocatedBytesForCurrentThread()
    let watch = Stopwatch.StartNew()

    for i in 0 .. w.Messages - 1 do
        let slot = w.Picks[i]

        match ledger.Complete tokens[slot] with
        | Ok() -> ()
        | Error e -> refused e

        match ledger.Deliver { TopicPartition = tp; Offset = offset } with
        | Ok t -> tokens[slot] <- t
        | Error e -> refused e

        offset <- offset + w.Steps[i]

        if i &&& 63 = 0 then
            checksum <- checksum + (ledger.CommitPoint tp |> ValueOption.get)

    watch.Stop()

    let bytesPerOp =
        float (GC.GetAllocatedBytesForCurrentThread() - allocated)
        / float (2 * w.Messages)

    watch.Elapsed.TotalSeconds, bytesPerOp, struct (checksum, (ledger.CommitPoint tp |> ValueOption.get))

/// One run of the mutable baseline.
let runBaseline (w: Workload) =
    let ledger = BaselineLedger()
    ledger.Assign(tp, 0L)
    runInPlace ledger w

/// The OwnedLedger behind members runInPlace can constrain on (its own are internal to KFlow.Core).
[<Sealed>]
type OwnedRun() =
    let ledger = OwnedLedger()
    member _.Assign(tp, start) = ledger.Assign(tp, start)
    member _.Deliver(position: Position) = ledger.Deliver position
    member _.Complete(token: Token) = ledger.Complete token
    member _.CommitPoint(tp: TopicPartition) = ledger.CommitPoint tp

/// One run of the owned ledger (written in place, no older version kept).
let runOwned (w: Workload) =
    let ledger = OwnedRun()
    ledger.Assign(tp, 0L)
    runInPlace ledger w

let private median (xs: float list) =
    let sorted = List.sort xs
    sorted[sorted.Length / 2]

/// Runs the benchmark (warm-up, then 7 interleaved measured runs of each), prints a table and
/// returns the figures to record (best runs; medians alongside).
let run () =
    let window = 10_000
    let runs = 7
    let w = workload window 2_000_000
    let ops = float (2 * w.Messages)

    // Warm-up: tiered JIT and the GC settle; the answers must agree.
    let warm = workload window 300_000
    let _, _, ledgerAnswer = runLedger warm
    let _, _, baselineAnswer = runBaseline warm
    let _, _, ownedAnswer = runOwned warm

    if ledgerAnswer <> baselineAnswer || ownedAnswer <> baselineAnswer then
        failwithf
            "The ledger, the owned ledger and the baseline disagree: %A, %A, %A"
            ledgerAnswer
            ownedAnswer
            baselineAnswer

    let ledgerRates = ResizeArray()
    let baselineRates = ResizeArray()
    let ownedRates = ResizeArray()
    let mutable ledgerBytes = 0.0
    let mutable baselineBytes = 0.0
    let mutable ownedBytes = 0.0

    for _ in 1..runs do
        GC.Collect()
        let seconds, bytes, _ = runLedger w
        ledgerRates.Add(ops / seconds)
        ledgerBytes <- bytes
        GC.Collect()
        let seconds, bytes, _ = runBaseline w
        baselineRates.Add(ops / seconds)
        baselineBytes <- bytes
        GC.Collect()
        let seconds, bytes, _ = runOwned w
        ownedRates.Add(ops / seconds)
        ownedBytes <- bytes

    let ledgerMedian = median (List.ofSeq ledgerRates)
    let baselineMedian = median (List.ofSeq baselineRates)
    let ledgerBest = Seq.max ledgerRates
    let baselineBest = Seq.max baselineRates
    let ownedMedian = median (List.ofSeq ownedRates)
    let ownedBest = Seq.max ownedRates

    printfn "Ledger: deliver + complete, random completion order among %d open offsets" window
    printfn "%d runs of %.0f operations each, after a warm-up\n" runs ops
    printfn "| %-30s | %13s | %13s | %12s |" "implementation" "median ops/s" "best ops/s" "bytes/op"
    printfn "|%s|%s|%s|%s|" (String('-', 32)) (String('-', 15)) (String('-', 15)) (String('-', 14))
    printfn "| %-30s | %13.0f | %13.0f | %12.1f |" "Ledger (immutable)" ledgerMedian ledgerBest ledgerBytes

    printfn "| %-30s | %13.0f | %13.0f | %12.1f |" "OwnedLedger (in place)" ownedMedian ownedBest ownedBytes

    printfn
        "| %-30s | %13.0f | %13.0f | %12.1f |"
        "baseline (mutable SortedSet)"
        baselineMedian
        baselineBest
        baselineBytes

    printfn
        "| %-30s | %13.2f | %13.2f | %12s |"
        "ratio ledger / baseline"
        (ledgerMedian / baselineMedian)
        (ledgerBest / baselineBest)
        ""

    printfn
        "| %-30s | %13.2f | %13.2f | %12s |"
        "ratio owned / baseline"
        (ownedMedian / baselineMedian)
        (ownedBest / baselineBest)
        ""

    // The keys hold the best run of each: on a shared machine the least disturbed run is the best
    // estimate of what each implementation costs; the medians are recorded next to them.
    [
        "ledger_ops_per_s", ledgerBest
        "ledger_baseline_ops_per_s", baselineBest
        "ratio_ledger_vs_baseline", ledgerBest / baselineBest
        "ledger_ops_per_s_median", ledgerMedian
        "ledger_baseline_ops_per_s_median", baselineMedian
        "ledger_bytes_per_op", ledgerBytes
        "ledger_baseline_bytes_per_op", baselineBytes
        "owned_ledger_ops_per_s", ownedBest
        "ratio_owned_ledger_vs_baseline", ownedBest / baselineBest
        "owned_ledger_ops_per_s_median", ownedMedian
        "owned_ledger_bytes_per_op", ownedBytes
    ]
