// The random schedule around a user's inputs for PipeProperties: its options, its steps (reads,
// ticks, sink answers, commits, crashes, rebalances), their generator and how a consumer runs them.
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
    /// Run async maps (Pipe.mapAsync) as deferred calls answered in random order, each failed with
    /// SinkFailureProbability (its input then stays unfinished until a replay); false runs them inline.
    /// Default true.
    DeferAsync: bool
} with

    /// The defaults: 3 partitions, crash 0.05, sink failure 0.1, revoke 0.05, ticks up to 5 s, key
    /// order checked, async maps deferred.
    static member Default = {
        Partitions = Some 3
        CrashProbability = 0.05
        SinkFailureProbability = 0.1
        RevokeProbability = 0.05
        MaxTick = TimeSpan.FromSeconds 5.0
        CheckKeyOrder = true
        DeferAsync = true
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
    /// These options with async maps deferred (answered in random order) or run inline.
    member this.WithDeferredAsync(defer: bool) = { this with DeferAsync = defer }

/// One generated step around the user's inputs.
[<RequireQualifiedAccess>]
type ChaosStep =
    /// Reads the next message of a partition (index modulo the partition count).
    | Read of partition: int
    /// Moves the clock on by this many milliseconds.
    | Tick of milliseconds: int
    /// Answers the pending sink write at this index (modulo their count): succeeds it or fails it.
    | Answer of pick: int * succeed: bool
    /// Answers the pending async call at this index (modulo their count): runs it or fails it.
    | AnswerAsync of pick: int * succeed: bool
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
/// Generating and running chaos schedules (internal to PipeProperties).
[<RequireQualifiedAccess>]
module internal Chaos =
    /// The reason given to every failure the schedule injects.
    [<Literal>]
    let generatedFailure = "generated failure"

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

    /// Raises ArgumentException unless offsets increase per partition in generator order.
    let checkPositions (messages: Message<'a> list) =
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

    /// One step, weighted by the options' probabilities.
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
            (if o.DeferAsync then 200 else 0),
            Gen.map2
                (fun pick failed -> ChaosStep.AnswerAsync(pick, failed >= weight o.SinkFailureProbability))
                (Gen.choose (0, 7))
                (Gen.choose (0, 999))
            100, Gen.constant ChaosStep.Commit
            weight o.CrashProbability, Gen.constant ChaosStep.Crash
            weight o.RevokeProbability, Gen.map ChaosStep.Revoke anyPartition
            weight o.RevokeProbability, Gen.map ChaosStep.Assign anyPartition
        ]

    /// A case: the user's messages (placed by the options) and about two steps per message plus size.
    let genCase (o: CrashReplayOptions) (inputs: Gen<Message<'a> list>) = gen {
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

    /// Shorter lists: halves first, then one element less.
    let private shrinkList (xs: 'x list) = seq {
        let n = List.length xs

        if n > 1 then
            yield List.take (n / 2) xs
            yield List.skip (n / 2) xs

        for i in 0 .. n - 1 -> List.removeAt i xs
    }

    /// Shrinks the steps, then the messages (by removal; the user's generator has no shrinker).
    let shrinkCase (c: ChaosCase<'a>) = seq {
        for s in shrinkList c.Steps -> { c with Steps = s }
        for m in shrinkList c.Messages -> { c with Messages = m }
    }

    /// The consumer model: next offset to read per assigned partition.
    /// A consumer's view of a run: the driver and the next offset to read per assigned partition.
    [<NoEquality; NoComparison>]
    type Consumer<'a, 'o> = {
        Driver: TestDriver<'a, 'o>
        Next: Map<TopicPartition, int64>
    }

    /// After a crash: every assigned partition is read again from its stored commit point.
    let fromCommitted (c: Consumer<'a, 'o>) = {
        c with
            Next = c.Next |> Map.map (fun tp _ -> TestDriver.committed tp c.Driver)
    }

    /// Answers the call that `pick` selects among the pending `ids`: `succeed` it if `ok`, else `fail`
    /// it with generatedFailure (none pending: nothing happens).
    let private answer (ids: 'id list) (pick: int) ok succeed fail (c: Consumer<'a, 'o>) =
        match ids with
        | [] -> c
        | ids ->
            let id = ids[pick % ids.Length]

            {
                c with
                    Driver =
                        (if ok then
                             succeed id c.Driver
                         else
                             fail id generatedFailure c.Driver)
            }

    /// Runs one step as a consumer would: reads resume from the commit point after a crash or assign.
    let apply (tps: TopicPartition[]) (messages: Message<'a> list) (c: Consumer<'a, 'o>) step =
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
            answer (TestDriver.pending d |> List.map _.Id) pick ok TestDriver.succeed TestDriver.fail c
        | ChaosStep.AnswerAsync(pick, ok) ->
            let pending =
                TestDriver.asyncCalls d
                |> List.filter (fun a -> a.Status = Pending)
                |> List.map _.Id

            answer pending pick ok TestDriver.runAsync TestDriver.failAsync c
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
