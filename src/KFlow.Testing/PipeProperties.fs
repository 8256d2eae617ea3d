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

/// <summary>The settings of <c>PipeProperties.crashReplay</c>. Start from
/// <c>PipeProperties.options</c> (F#) or <c>CrashReplayOptions.Default</c> (C#).</summary>
type CrashReplayOptions = {
    /// Spread the generated messages over this many partitions of topic "input" by a hash of their
    /// key (as Kafka's default partitioner does), with random offset gaps; None keeps the positions
    /// the generator set (offsets must then increase per partition). Default Some 3.
    Partitions: int option
    /// The chance that a step crashes the pipe (all state dropped, restart from the stored commit
    /// points). Default 0.05.
    CrashProbability: float
    /// The chance that a sink write is failed instead of succeeded. Default 0.1.
    SinkFailureProbability: float
    /// The chance that a step revokes a partition (it is assigned again later). Default 0.05.
    RevokeProbability: float
    /// The largest clock step of a tick. Default 5 s.
    MaxTick: TimeSpan
    /// Check that the inputs of each key reach each sink in offset order within one assignment. Turn
    /// it off for pipes that reorder on purpose or demux by something other than the key. Default true.
    CheckKeyOrder: bool
} with

    /// The defaults: 3 partitions, crash 0.05, sink failure 0.1, revoke 0.05, ticks up to 5 s, key order checked.
    static member Default = {
        Partitions = Some 3
        CrashProbability = 0.05
        SinkFailureProbability = 0.1
        RevokeProbability = 0.05
        MaxTick = TimeSpan.FromSeconds 5.0
        CheckKeyOrder = true
    }

    /// These options with the messages spread over `partitions` partitions by key.
    member this.WithPartitions(partitions: int) = {
        this with
            Partitions = Some partitions
    }

    /// These options keeping the positions the generator set.
    member this.WithGeneratorPositions() = { this with Partitions = None }
    /// These options with another crash probability.
    member this.WithCrashProbability(p: float) = { this with CrashProbability = p }
    /// These options with another sink failure probability.
    member this.WithSinkFailureProbability(p: float) = { this with SinkFailureProbability = p }
    /// These options with another revoke probability.
    member this.WithRevokeProbability(p: float) = { this with RevokeProbability = p }
    /// These options with per-key order checked or not.
    member this.WithKeyOrder(check: bool) = { this with CheckKeyOrder = check }

/// One generated step around the user's inputs.
[<RequireQualifiedAccess>]
type ChaosStep =
    /// Reads the next message of a partition (index modulo the partition count).
    | Read of partition: int
    /// Moves the clock on by this many milliseconds.
    | Tick of milliseconds: int
    /// Answers the pending sink write at this index (modulo their count): succeeds it or fails it.
    | Answer of pick: int * succeed: bool
    /// Stores the commit points.
    | Commit
    /// Drops all pipe state and restarts from the stored commit points.
    | Crash
    /// Revokes a partition (index modulo the partition count).
    | Revoke of partition: int
    /// Assigns a revoked partition again.
    | Assign of partition: int

/// One generated case: the user's messages (placed on partitions) and the steps around them.
type ChaosCase<'a> = {
    Messages: Message<'a> list
    Steps: ChaosStep list
}

/// Checking a user's pipe under crashes, rebalances and sink failures.
[<RequireQualifiedAccess>]
module PipeProperties =
    /// The default options (see CrashReplayOptions.Default).
    let options = CrashReplayOptions.Default

    /// A stable hash of a key (FNV-1a over UTF-8), as a partitioner would use.
    let private keyHash (key: string) =
        let mutable h = 2166136261u

        for b in Encoding.UTF8.GetBytes key do
            h <- (h ^^^ uint32 b) * 16777619u

        h

    /// The messages on partitions of "input" by key hash, offsets increasing with the given gaps.
    let private place (partitions: int) (gaps: int list) (messages: Message<'a> list) =
        let next = Dictionary<int, int64>()

        List.zip messages (List.truncate messages.Length gaps)
        |> List.map (fun (m, gap) ->
            let p = int (keyHash m.Key % uint32 partitions)

            let offset =
                (match next.TryGetValue p with
                 | true, o -> o
                 | _ -> 0L)
                + int64 gap
                - 1L

            next[p] <- offset + 1L

            Message.create (TopicPartition.create "input" p) offset m.Key m.Value
            |> Message.withTimestamp m.Timestamp)

    let private checkPositions (messages: Message<'a> list) =
        messages
        |> List.groupBy (fun m -> m.Position.TopicPartition)
        |> List.iter (fun (tp, ms) ->
            for a, b in List.pairwise ms do
                if b.Position.Offset <= a.Position.Offset then
                    invalidArg
                        "inputs"
                        (sprintf
                            "The generator gave %O offsets %d then %d; offsets must increase per partition in generator order, or set Partitions to spread the messages by key."
                            tp
                            a.Position.Offset
                            b.Position.Offset))

    let private genStep (o: CrashReplayOptions) =
        let weight (p: float) = max 0 (int (Math.Round(p * 1000.0)))
        let anyPartition = Gen.choose (0, 63)

        Gen.frequency [
            400, Gen.map ChaosStep.Read anyPartition
            150, Gen.choose (0, int o.MaxTick.TotalMilliseconds) |> Gen.map ChaosStep.Tick
            300,
            Gen.map2
                (fun pick failed -> ChaosStep.Answer(pick, failed >= weight o.SinkFailureProbability))
                (Gen.choose (0, 7))
                (Gen.choose (0, 999))
            100, Gen.constant ChaosStep.Commit
            weight o.CrashProbability, Gen.constant ChaosStep.Crash
            weight o.RevokeProbability, Gen.map ChaosStep.Revoke anyPartition
            weight o.RevokeProbability, Gen.map ChaosStep.Assign anyPartition
        ]

    let private genCase (o: CrashReplayOptions) (inputs: Gen<Message<'a> list>) = gen {
        let! messages = inputs

        let! gaps =
            Gen.listOfLength messages.Length (Gen.frequency [ 4, Gen.constant 1; 1, Gen.choose (2, 4) ])

        let! extra = Gen.sized (fun s -> Gen.choose (0, s))
        let! steps = Gen.listOfLength (2 * messages.Length + extra) (genStep o)

        let messages =
            match o.Partitions with
            | Some n -> place n gaps messages
            | None -> messages

        return { Messages = messages; Steps = steps }
    }

    let private shrinkList (xs: 'x list) = seq {
        let n = List.length xs

        if n > 1 then
            yield List.take (n / 2) xs
            yield List.skip (n / 2) xs

        for i in 0 .. n - 1 -> List.removeAt i xs
    }

    let private shrinkCase (c: ChaosCase<'a>) = seq {
        for s in shrinkList c.Steps -> { c with Steps = s }
        for m in shrinkList c.Messages -> { c with Messages = m }
    }

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

    /// The consumer model: next offset to read per assigned partition.
    [<NoEquality; NoComparison>]
    type private Consumer<'a, 'o> = {
        Driver: TestDriver<'a, 'o>
        Next: Map<TopicPartition, int64>
    }

    let private fromCommitted (c: Consumer<'a, 'o>) = {
        c with
            Next = c.Next |> Map.map (fun tp _ -> TestDriver.committed tp c.Driver)
    }

    let private apply (tps: TopicPartition[]) (messages: Message<'a> list) (c: Consumer<'a, 'o>) step =
        let d = c.Driver

        match step with
        | ChaosStep.Read p ->
            let tp = tps[p % tps.Length]

            match Map.tryFind tp c.Next with
            | None -> c
            | Some next ->
                match
                    messages
                    |> List.tryFind (fun m -> m.Position.TopicPartition = tp && m.Position.Offset >= next)
                with
                | None -> c
                | Some m -> {
                    Driver = TestDriver.feed m d
                    Next = Map.add tp (m.Position.Offset + 1L) c.Next
                  }
        | ChaosStep.Tick ms -> {
            c with
                Driver = TestDriver.advance (TimeSpan.FromMilliseconds(float ms)) d
          }
        | ChaosStep.Answer(pick, ok) ->
            match TestDriver.pending d with
            | [] -> c
            | calls ->
                let id = calls[pick % calls.Length].Id

                {
                    c with
                        Driver =
                            (if ok then
                                 TestDriver.succeed id d
                             else
                                 TestDriver.fail id "generated sink failure" d)
                }
        | ChaosStep.Commit -> { c with Driver = TestDriver.commit d }
        | ChaosStep.Crash -> fromCommitted { c with Driver = TestDriver.crash d }
        | ChaosStep.Revoke p ->
            let tp = tps[p % tps.Length]

            {
                Driver = TestDriver.revoke tp d
                Next = Map.remove tp c.Next
            }
        | ChaosStep.Assign p ->
            let tp = tps[p % tps.Length]

            if c.Next.ContainsKey tp then
                c
            else
                let d = TestDriver.assign tp d

                {
                    Driver = d
                    Next = Map.add tp (TestDriver.committed tp d) c.Next
                }

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
            }

            let start = {
                Driver = TestDriver.create manual pipe |> assignAll
                Next = tps |> Array.map (fun tp -> tp, 0L) |> Map.ofArray
            }

            let consumer, errors =
                ((start, []), List.indexed case.Steps)
                ||> List.fold (fun (c, errors) (i, step) ->
                    if not (List.isEmpty errors) then
                        c, errors
                    else
                        let c = apply tps messages c step

                        c,
                        unfinishedCommitted c.Driver
                        |> List.map (sprintf "step %d (%A): %s" (i + 1) step))

            if not errors.IsEmpty then
                errors
            else
                // 3. Settle: assign everything, read the rest, shut down, answer every write, commit;
                // crash and replay from the commit points while a partition is not at its end.
                let atEnd (c: Consumer<'a, 'o>) =
                    tps
                    |> Array.forall (fun tp ->
                        let last =
                            messages |> List.filter (fun m -> m.Position.TopicPartition = tp) |> List.last

                        TestDriver.committed tp c.Driver = last.Position.Offset + 1L)

                let round (c: Consumer<'a, 'o>) =
                    let c =
                        (c, messages)
                        ||> List.fold (fun c m ->
                            apply
                                tps
                                messages
                                c
                                (ChaosStep.Read(Array.IndexOf(tps, m.Position.TopicPartition))))

                    {
                        c with
                            Driver =
                                c.Driver |> TestDriver.flush |> TestDriver.succeedAll |> TestDriver.commit
                    }

                let rec settle n c =
                    if n = 0 || atEnd c then
                        c
                    else
                        settle (n - 1) (round (apply tps messages c ChaosStep.Crash))

                let assigned =
                    (consumer, [ 0 .. tps.Length - 1 ])
                    ||> List.fold (fun c p -> apply tps messages c (ChaosStep.Assign p))

                let d = (settle 3 (round assigned)).Driver
                let isDone = finished d

                let calm =
                    case.Steps
                    |> List.forall (function
                        | ChaosStep.Crash
                        | ChaosStep.Revoke _ -> false
                        | ChaosStep.Answer(_, ok) -> ok
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
                    for f in TestDriver.failures d do
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

        let arb = Arb.fromGenShrink (genCase options inputs, shrinkCase)

        Prop.forAll arb (fun case ->
            if options.Partitions.IsNone then
                checkPositions case.Messages

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
