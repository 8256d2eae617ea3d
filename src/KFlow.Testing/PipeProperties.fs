// A ready-made FsCheck property for a user's own pipe: it runs the user's inputs through the test
// driver under random crashes, rebalances, sink failures and completion orders, and checks that no
// input is committed unfinished or lost (the guarantees 1-5 of the core's own properties).
namespace KFlow.Testing

open System
open System.Collections.Generic
open System.Text
open FsCheck
open FsCheck.FSharp
open KFlow

/// Checking a user's pipe under crashes, rebalances and sink failures.
[<RequireQualifiedAccess>]
module PipeProperties =
    /// The default options (see CrashReplayOptions.Default).
    let options = CrashReplayOptions.Default

    /// Every token finished by the driver: in succeeded sink calls (with the call) and in outputs.
    let private finishedTokens (d: TestDriver<'a, 'o>) = [
        for c in TestDriver.sinkCalls d do
            if c.Status = Succeeded then
                for t in c.Tokens -> t, sprintf "call %d" c.Id
        for e in TestDriver.outputs d do
            for t in e.Tokens -> t, "an output"
    ]

    /// How many parts each position yields (finished tokens), by epoch.
    let private partsByEpoch (d: TestDriver<'a, 'o>) =
        finishedTokens d
        |> List.countBy (fun (t, _) -> t.Position, t.Epoch)
        |> Map.ofList

    /// Checks one case; returns the violations, readable.
    let private check (o: CrashReplayOptions) (pipe: Pipe<'a, 'o>) (case: ChaosCase<'a>) : string list =
        let messages = case.Messages

        let tps =
            messages
            |> List.map (fun m -> m.Position.TopicPartition)
            |> List.distinct
            |> List.sort
            |> Array.ofList

        let keyOf = messages |> List.map (fun m -> m.Position, m.Key) |> Map.ofList

        let assignAll d =
            (d, tps) ||> Array.fold (fun d tp -> TestDriver.assign tp d)

        // 1. The undisturbed run: how many sink parts (or outputs) each input yields.
        let reference =
            TestDriver.start pipe
            |> assignAll
            |> TestDriver.feedAll messages
            |> TestDriver.flush

        let parts =
            finishedTokens reference
            |> List.countBy (fun (t, _) -> t.Position)
            |> Map.ofList

        let partsOf p =
            Map.tryFind p parts |> Option.defaultValue 0

        let referenceErrors = [
            for f in TestDriver.failures reference do
                yield
                    sprintf "stage %s threw on %A even without crashes: %s" f.Stage f.Position f.Error.Message
            for c in TestDriver.sinkCalls reference do
                match c.Status with
                | Failed reason ->
                    yield
                        sprintf
                            "sink %s threw on the write of %A even without injected failures: %s"
                            c.Sink
                            (c.Tokens |> List.map (fun t -> t.Position))
                            reason
                | _ -> ()
            for tp, c in Ledger.commitPoints (TestDriver.ledger reference) do
                match messages |> List.filter (fun m -> m.Position.TopicPartition = tp) with
                | [] -> ()
                | ms ->
                    let e = (List.last ms).Position.Offset + 1L

                    if c <> e then
                        yield
                            sprintf
                                "even without crashes, %O stays at commit point %d after shutdown (last input %d): a stage keeps or never finishes offset %d"
                                tp
                                c
                                (e - 1L)
                                c
        ]

        if messages.IsEmpty then
            []
        elif not referenceErrors.IsEmpty then
            referenceErrors
        else
            let finished (d: TestDriver<'a, 'o>) =
                let byEpoch = partsByEpoch d

                fun (p: Position) ->
                    let n = partsOf p
                    n = 0 || byEpoch |> Map.exists (fun (q, _) k -> q = p && k >= n)

            let describe (d: TestDriver<'a, 'o>) (p: Position) =
                let where =
                    finishedTokens d
                    |> List.filter (fun (t, _) -> t.Position = p)
                    |> List.map (fun (t, w) -> sprintf "%s (epoch %d)" w t.Epoch)

                let pendingCalls =
                    TestDriver.sinkCalls d
                    |> List.filter (fun c ->
                        c.Status <> Succeeded && c.Tokens |> List.exists (fun t -> t.Position = p))
                    |> List.map (fun c -> sprintf "call %d %A" c.Id c.Status)

                sprintf
                    "it yields %d part(s) in an undisturbed run; finished: %s; unfinished: %s"
                    (partsOf p)
                    (if where.IsEmpty then "none" else String.concat ", " where)
                    (if pendingCalls.IsEmpty then
                         "none"
                     else
                         String.concat ", " pendingCalls)

            // 2. Property 1 at every step, on stored and live commit points.
            let unfinishedCommitted (d: TestDriver<'a, 'o>) =
                let isDone = finished d

                [
                    for kind, tp, c in
                        [ for KeyValue(tp, c) in TestDriver.commitPoints d -> "stored", tp, c ]
                        @ [ for tp, c in Ledger.commitPoints (TestDriver.ledger d) -> "live", tp, c ] do
                        match
                            messages
                            |> List.tryFind (fun m ->
                                m.Position.TopicPartition = tp
                                && m.Position.Offset < c
                                && not (isDone m.Position))
                        with
                        | Some m ->
                            yield
                                sprintf
                                    "the %s commit point %d of %O passes offset %d, whose processing is unfinished: %s"
                                    kind
                                    c
                                    tp
                                    m.Position.Offset
                                    (describe d m.Position)
                        | None -> ()
                ]

            let manual = {
                TestDriver.options with
                    SinkMode = Manual
                    AutoCommit = false
                    AsyncMode = (if o.DeferAsync then Defer else RunInline)
            }

            let start: Chaos.Consumer<'a, 'o> = {
                Driver = TestDriver.create manual pipe |> assignAll
                Next = tps |> Array.map (fun tp -> tp, 0L) |> Map.ofArray
            }

            let consumer, errors =
                ((start, []), List.indexed case.Steps)
                ||> List.fold (fun (c, errors) (i, step) ->
                    if not (List.isEmpty errors) then
                        c, errors
                    else
                        let c = Chaos.apply tps messages c step

                        c,
                        unfinishedCommitted c.Driver
                        |> List.map (sprintf "step %d (%A): %s" (i + 1) step))

            if not errors.IsEmpty then
                errors
            else
                // 3. Settle: assign everything, read the rest, shut down, answer every write, commit;
                // crash and replay from the commit points while a partition is not at its end.
                let atEnd (c: Chaos.Consumer<'a, 'o>) =
                    tps
                    |> Array.forall (fun tp ->
                        let last =
                            messages |> List.filter (fun m -> m.Position.TopicPartition = tp) |> List.last

                        TestDriver.committed tp c.Driver = last.Position.Offset + 1L)

                let round (c: Chaos.Consumer<'a, 'o>) =
                    let c =
                        (c, messages)
                        ||> List.fold (fun c m ->
                            Chaos.apply
                                tps
                                messages
                                c
                                (ChaosStep.Read(Array.IndexOf(tps, m.Position.TopicPartition))))

                    // A flush waits for the deferred async calls in flight, so one shutdown is enough.
                    {
                        c with
                            Driver =
                                c.Driver |> TestDriver.flush |> TestDriver.succeedAll |> TestDriver.commit
                    }

                let rec settle n c =
                    if n = 0 || atEnd c then
                        c
                    else
                        settle (n - 1) (round (Chaos.apply tps messages c ChaosStep.Crash))

                let assigned =
                    (consumer, [ 0 .. tps.Length - 1 ])
                    ||> List.fold (fun c p -> Chaos.apply tps messages c (ChaosStep.Assign p))

                let d = (settle 3 (round assigned)).Driver
                let isDone = finished d

                let calm =
                    case.Steps
                    |> List.forall (function
                        | ChaosStep.Crash
                        | ChaosStep.Revoke _ -> false
                        | ChaosStep.Answer(_, ok)
                        | ChaosStep.AnswerAsync(_, ok) -> ok
                        | _ -> true)

                let counts =
                    finishedTokens d |> List.countBy (fun (t, _) -> t.Position) |> Map.ofList

                let order = [
                    if o.CheckKeyOrder then
                        let streams =
                            [
                                for c in TestDriver.sinkCalls d |> List.sortBy (fun c -> c.Id) do
                                    for t in c.Tokens -> c.Sink, t
                            ]
                            @ [
                                for e in TestDriver.outputs d do
                                    for t in e.Tokens -> "(outputs)", t
                            ]

                        for (sink, tp, key, epoch), xs in
                            streams
                            |> List.groupBy (fun (s, t) ->
                                s, t.Position.TopicPartition, keyOf[t.Position], t.Epoch) do
                            for (_, a), (_, b) in List.pairwise xs do
                                if b.Position.Offset < a.Position.Offset then
                                    yield
                                        sprintf
                                            "key %s of %O reached %s out of order in epoch %d: offset %d after %d"
                                            key
                                            tp
                                            sink
                                            epoch
                                            b.Position.Offset
                                            a.Position.Offset
                ]

                [
                    yield! unfinishedCommitted d |> List.map (sprintf "after settling: %s")
                    for m in messages do
                        if not (isDone m.Position) then
                            yield
                                sprintf
                                    "input %O (key %s) was lost: after replaying from the commit points until quiet, %s"
                                    m.Position
                                    m.Key
                                    (describe d m.Position)
                        elif
                            calm
                            && Map.tryFind m.Position counts |> Option.defaultValue 0 <> partsOf m.Position
                        then
                            yield
                                sprintf
                                    "input %O was processed more than once without any crash, failure or rebalance: %s"
                                    m.Position
                                    (describe d m.Position)
                    for tp in tps do
                        let last =
                            messages |> List.filter (fun m -> m.Position.TopicPartition = tp) |> List.last

                        let c = TestDriver.committed tp d

                        if c <> last.Position.Offset + 1L then
                            yield
                                sprintf
                                    "%O is committed at %d once quiet, not one past its last input %d"
                                    tp
                                    c
                                    last.Position.Offset
                    for tp, history in TestDriver.commitHistory d |> List.groupBy (fun c -> c.TopicPartition) do
                        for a, b in List.pairwise history do
                            if b.Offset < a.Offset then
                                yield
                                    sprintf
                                        "the commit point of %O moved back from %d (epoch %d) to %d (epoch %d)"
                                        tp
                                        a.Offset
                                        a.Epoch
                                        b.Offset
                                        b.Epoch
                    for f in
                        TestDriver.failures d
                        |> List.filter (fun f -> f.Error.Message <> Chaos.generatedFailure) do
                        yield sprintf "stage %s threw on %A: %s" f.Stage f.Position f.Error.Message
                    yield! order
                ]

    /// <summary>The crash/replay property of a pipe with explicit options.</summary>
    /// <remarks>
    /// For each generated message list:
    /// 1. An undisturbed run (every write succeeds, then shutdown) tells how many sink parts (or
    ///    outputs) each input yields; 0 means the pipe drops it. The pipe must be deterministic per
    ///    input (the parts an input yields must not depend on batching, timing or rebalances).
    /// 2. A run under random reads, ticks, sink successes and failures (in any order), commits,
    ///    crashes and rebalances checks at every step that no stored or live commit point passes an
    ///    input not yet finished (all its parts written within one assignment).
    /// 3. Afterwards it shuts down, answers every write, and crashes and replays from the commit
    ///    points until quiet; then every input must be finished, each partition committed to its end,
    ///    commit points never moved back, no stage threw, each key's inputs reached each sink in offset
    ///    order (CheckKeyOrder), and without crash, failure or revoke every input was processed once.
    /// </remarks>
    let crashReplayWith
        (options: CrashReplayOptions)
        (pipe: Pipe<'a, 'o>)
        (inputs: Gen<Message<'a> list>)
        : Property =
        if options.Partitions |> Option.exists (fun n -> n < 1) then
            invalidArg
                "options"
                "Partitions must be ≥ 1; set it in CrashReplayOptions (or None to keep the generator's positions)."

        let arb = Arb.fromGenShrink (Chaos.genCase options inputs, Chaos.shrinkCase)

        Prop.forAll arb (fun case ->
            if options.Partitions.IsNone then
                Chaos.checkPositions case.Messages

            match check options pipe case with
            | [] -> Prop.ofTestable true
            | errors -> Prop.label (String.concat "\n" (List.truncate 5 errors)) false)

    /// The crash/replay property of a pipe with the default options (see crashReplayWith).
    let crashReplay (pipe: Pipe<'a, 'o>) (inputs: Gen<Message<'a> list>) : Property =
        crashReplayWith options pipe inputs

/// The C# face of PipeProperties.
[<AbstractClass; Sealed>]
type PipeProperties =
    /// The crash/replay property of a pipe over generated message lists, with default options.
    static member CrashReplay(pipe: Pipe<'a, 'o>, inputs: Gen<IReadOnlyList<Message<'a>>>) : Property =
        PipeProperties.crashReplay pipe (inputs |> Gen.map List.ofSeq)

    /// The crash/replay property of a pipe over generated message lists, with options.
    static member CrashReplay
        (pipe: Pipe<'a, 'o>, inputs: Gen<IReadOnlyList<Message<'a>>>, options: CrashReplayOptions)
        : Property =
        PipeProperties.crashReplayWith options pipe (inputs |> Gen.map List.ofSeq)
