// Running generated scenarios on the test driver as a consumer would (resuming from commit points),
// settling until quiet, and judging "finished" from the driver's sink calls against the pipe model.
module KFlow.Core.Tests.PipeScenario

open System
open FsCheck
open FsCheck.FSharp
open Expecto
open KFlow
open KFlow.Core.Tests.PipeSpec
open KFlow.Core.Tests.PipeGen


/// A run in progress: the driver and the next offset a consumer would read per assigned partition.
[<NoEquality; NoComparison>]
type Run = {
    Driver: TestDriver<Input, Sunk>
    Next: Map<int, int64>
}

let messageOf (input: Input) =
    Message.create (tpOf input.Partition) input.Offset input.Key input

/// Starts a scenario: Manual sinks, every partition assigned.
let start (s: Scenario) =
    let options = {
        TestDriver.options with
            SinkMode = Manual
            AutoCommit = s.AutoCommit
            AsyncMode = (if s.Deferred then Defer else RunInline)
    }

    let d =
        (TestDriver.create options (build s.Pipe), [ 0 .. s.Partitions - 1 ])
        ||> List.fold (fun d p -> TestDriver.assign (tpOf p) d)

    {
        Driver = d
        Next = Map.ofList [ for p in 0 .. s.Partitions - 1 -> p, 0L ]
    }

let private fromCommitted (run: Run) = {
    run with
        Next = run.Next |> Map.map (fun p _ -> TestDriver.committed (tpOf p) run.Driver)
}

/// Applies one command, as a consumer (resuming from the commit point after a crash or assign) would.
let step (s: Scenario) (run: Run) (command: Command) =
    let d = run.Driver

    let pick k (f: int -> TestDriver<_, _> -> TestDriver<_, _>) =
        match TestDriver.pending d with
        | [] -> run
        | calls -> {
            run with
                Driver = f (calls[k % calls.Length]).Id d
          }

    let pickAsync k (f: int -> TestDriver<_, _> -> TestDriver<_, _>) =
        match TestDriver.asyncCalls d |> List.filter (fun c -> c.Status = Pending) with
        | [] -> run
        | calls -> {
            run with
                Driver = f (calls[k % calls.Length]).Id d
          }

    match command with
    | RunAsync k -> pickAsync k TestDriver.runAsync
    | FailAsync k -> pickAsync k (fun id -> TestDriver.failAsync id "generated failure")
    | Feed p ->
        let p = p % s.Partitions

        match Map.tryFind p run.Next with
        | None -> run
        | Some next ->
            match s.Inputs |> List.tryFind (fun i -> i.Partition = p && i.Offset >= next) with
            | None -> run
            | Some i -> {
                Driver = TestDriver.feed (messageOf i) d
                Next = Map.add p (i.Offset + 1L) run.Next
              }
    | Advance secs -> {
        run with
            Driver = TestDriver.advance (TimeSpan.FromSeconds(float secs)) d
      }
    | Succeed k -> pick k TestDriver.succeed
    | Fail k -> pick k (fun id -> TestDriver.fail id "generated failure")
    | Commit -> {
        run with
            Driver = TestDriver.commit d
      }
    | Crash -> fromCommitted { run with Driver = TestDriver.crash d }
    | Replay ->
        let d = TestDriver.replay d

        let next =
            run.Next
            |> Map.map (fun p next ->
                TestDriver.inputs d
                |> List.filter (fun m -> m.Position.TopicPartition = tpOf p)
                |> List.fold (fun n m -> max n (m.Position.Offset + 1L)) next)

        { Driver = d; Next = next }
    | Revoke p ->
        let p = p % s.Partitions

        {
            Driver = TestDriver.revoke (tpOf p) d
            Next = Map.remove p run.Next
        }
    | Assign p ->
        let p = p % s.Partitions

        if run.Next.ContainsKey p then
            run
        else
            let d = TestDriver.assign (tpOf p) d

            {
                Driver = d
                Next = Map.add p (TestDriver.committed (tpOf p) d) run.Next
            }

/// Feeds every input not read yet of the assigned partitions.
let feedRest (s: Scenario) (run: Run) =
    (run, s.Inputs)
    ||> List.fold (fun run i ->
        match Map.tryFind i.Partition run.Next with
        | Some next when i.Offset >= next -> step s run (Feed i.Partition)
        | _ -> run)

/// One past the last input of every partition that has inputs.
let ends (s: Scenario) =
    s.Inputs
    |> List.groupBy (fun i -> i.Partition)
    |> List.map (fun (p, is) -> p, (is |> List.map (fun i -> i.Offset) |> List.max) + 1L)

let atEnd (s: Scenario) (run: Run) =
    ends s
    |> List.forall (fun (p, e) -> TestDriver.committed (tpOf p) run.Driver = e)

/// Shutdown and restart until quiet: assign everything, read the rest, flush, answer every call and
/// write (a flush waits for deferred calls in flight, so one is enough), commit; then, at most
/// `restarts` times, crash and replay from the commit points until every partition is at its end.
let settle (restarts: int) (s: Scenario) (run: Run) =
    let run =
        (run, [ 0 .. s.Partitions - 1 ])
        ||> List.fold (fun run p -> step s run (Assign p))

    let round run =
        let run = feedRest s run

        {
            run with
                Driver = run.Driver |> TestDriver.flush |> TestDriver.succeedAll |> TestDriver.commit
        }

    let rec loop n run =
        if n = 0 || atEnd s run then
            run
        else
            loop (n - 1) (round (step s run Crash))

    loop restarts (round run)

// ---- what the driver reports, checked against the model ----

/// Every (call, item, token) of sink calls, values and tokens aligned; misaligned calls are
/// reported as violations (a call's tokens must stand for exactly its items' inputs).
let sunk (calls: SinkCall list) =
    let aligned, broken =
        calls
        |> List.partition (fun c ->
            let items = unbox<Item list> c.Value

            items.Length = c.Tokens.Length
            && List.forall2 (fun (it: Item) (t: Token) -> t.Position = positionOf it.Origin) items c.Tokens)

    let triples = [
        for c in aligned do
            for it, t in List.zip (unbox<Item list> c.Value) c.Tokens -> c, it, t
    ]

    triples,
    [
        for c in broken ->
            sprintf
                "sink call %d holds tokens %A for items %A"
                c.Id
                (c.Tokens |> List.map (fun t -> t.Position))
                (unbox<Item list> c.Value |> List.map (fun it -> positionOf it.Origin))
    ]

/// Inputs fully processed: dropped by the pipe (no leaves), or every leaf reached a succeeded
/// sink call within one assignment (epoch) of its partition.
let finished (s: Scenario) (calls: SinkCall list) =
    let triples, _ = sunk calls

    let byEpoch =
        triples
        |> List.filter (fun (c, _, _) -> c.Status = Succeeded)
        |> List.map (fun (_, it, t) -> it, t.Epoch)
        |> Set.ofList

    let epochs = byEpoch |> Seq.map snd |> Seq.distinct |> List.ofSeq

    s.Inputs
    |> List.filter (fun i ->
        match leaves s.Pipe i with
        | [] -> true
        | ls ->
            epochs
            |> List.exists (fun e -> ls |> List.forall (fun l -> byEpoch.Contains(l, e))))
    |> List.map positionOf
    |> Set.ofList

/// Property 1 at one step: no stored or live commit point passes an unfinished input.
let unfinishedCommitted (s: Scenario) (d: TestDriver<Input, Sunk>) =
    let done' = finished s (TestDriver.sinkCalls d)

    let points =
        [ for KeyValue(tp, c) in TestDriver.commitPoints d -> "stored", tp, c ]
        @ [ for tp, c in Ledger.commitPoints (TestDriver.ledger d) -> "ledger", tp, c ]

    [
        for kind, tp, c in points do
            for i in s.Inputs do
                if tpOf i.Partition = tp && i.Offset < c && not (done'.Contains(positionOf i)) then
                    sprintf
                        "%s commit point %d of %O passes offset %d, which is unfinished (leaves %A)"
                        kind
                        c
                        tp
                        i.Offset
                        (leaves s.Pipe i |> List.map (fun l -> l.N, l.Path))
    ]

/// Runs the commands, checking `each` after every one; returns the trace's violations and the run.
let runChecking (s: Scenario) (each: Run -> string list) =
    let run0 = start s

    ((run0, []), s.Commands)
    ||> List.fold (fun (run, violations) c ->
        if not (List.isEmpty violations) then
            run, violations
        else
            let run = step s run c
            run, each run |> List.map (sprintf "after %A: %s" c))

/// The property's verdict: true, or false labelled with the violations.
let verdict (violations: string list) =
    match violations with
    | [] -> Prop.ofTestable true
    | vs -> Prop.label (String.concat "\n" (List.truncate 5 vs)) false

/// The FsCheck settings of the pipe properties: 300 cases, sizes up to 40 (at most 120 commands).
let config = {
    FsCheckConfig.defaultConfig with
        maxTest = 300
        endSize = 40
}
