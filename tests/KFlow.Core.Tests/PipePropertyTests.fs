// Properties of pipes run by the test driver (issue 3, properties 1-6): random pipes from the stage
// set, random inputs, completion orders, crashes and rebalances; "finished" is judged from the reports.
module KFlow.Core.Tests.PipePropertyTests

open System
open FsCheck
open FsCheck.FSharp
open Expecto
open KFlow
open KFlow.Core.Tests.PipeSpec
open KFlow.Core.Tests.PipeGen
open KFlow.Core.Tests.PipeScenario

/// Succeeded sink items, with how often each was written.
let private writtenCounts (d: TestDriver<Input, Sunk>) =
    let triples, _ = sunk (TestDriver.sinkCalls d)

    triples
    |> List.filter (fun (c, _, _) -> c.Status = Succeeded)
    |> List.countBy (fun (_, it, _) -> it)
    |> Map.ofList

/// After settling: every leaf written (exactly once if `exactly`), nothing else written, every
/// partition committed to its end, every call's tokens matching its items.
let private delivered (exactly: bool) (s: Scenario) (run: Run) =
    let d = run.Driver
    let counts = writtenCounts d
    let expected = s.Inputs |> List.collect (leaves s.Pipe)
    let expectedSet = Set.ofList expected
    let _, misaligned = sunk (TestDriver.sinkCalls d)

    [
        yield! misaligned
        for l in expected do
            match Map.tryFind l counts with
            | None ->
                yield sprintf "%O (value %d, path %A) never reached the sink" (positionOf l.Origin) l.N l.Path
            | Some n when exactly && n <> 1 ->
                yield
                    sprintf
                        "%O (path %A) was written %d times without any crash"
                        (positionOf l.Origin)
                        l.Path
                        n
            | Some _ -> ()
        for KeyValue(it, _) in counts do
            if not (expectedSet.Contains it) then
                yield sprintf "%A was written but the pipe cannot produce it" it
        for p, e in ends s do
            let c = TestDriver.committed (tpOf p) d

            if c <> e then
                yield sprintf "partition %d committed %d once quiet, expected its end %d" p c e
        for f in
            TestDriver.failures d
            |> List.filter (fun f -> f.Error.Message <> "generated failure") do
            yield sprintf "stage %s threw: %s" f.Stage f.Error.Message
    ]

/// Property 2: per partition, stored commit points never decrease within an epoch, nor across epochs
/// (a new assignment starts from the stored point).
let private backwards (d: TestDriver<Input, Sunk>) =
    TestDriver.commitHistory d
    |> List.groupBy (fun c -> c.TopicPartition)
    |> List.collect (fun (tp, history) ->
        history
        |> List.pairwise
        |> List.choose (fun (a, b) ->
            if b.Offset < a.Offset then
                Some(
                    sprintf
                        "%O went back from %d (epoch %d) to %d (epoch %d)%s"
                        tp
                        a.Offset
                        a.Epoch
                        b.Offset
                        b.Epoch
                        (if a.Epoch = b.Epoch then " within one assignment" else "")
                )
            else
                None))

/// Property 4: per partition, key and assignment, sink items are requested in (offset, unfold path) order.
let private outOfOrder (d: TestDriver<Input, Sunk>) =
    let triples, _ = sunk (TestDriver.sinkCalls d |> List.sortBy (fun c -> c.Id))

    triples
    |> List.groupBy (fun (_, it, t) -> it.Origin.Partition, it.Origin.Key, t.Epoch)
    |> List.collect (fun ((p, key, epoch), xs) ->
        xs
        |> List.map (fun (c, it, _) -> c.Id, (it.Origin.Offset, it.Path))
        |> List.pairwise
        |> List.choose (fun ((c1, a), (c2, b)) ->
            if compare a b >= 0 then
                Some(
                    sprintf
                        "key %s of partition %d (epoch %d): %A (call %d) came before %A (call %d)"
                        key
                        p
                        epoch
                        a
                        c1
                        b
                        c2
                )
            else
                None))

let private chaos = scenarios Chaos

let private kinds (s: Scenario) =
    s.Commands
    |> List.choose (function
        | Crash -> Some "crash"
        | Revoke _ -> Some "revoke"
        | Fail _ -> Some "fail"
        | FailAsync _ -> Some "failAsync"
        | _ -> None)
    |> List.distinct
    |> List.sort
    |> String.concat "+"

/// Property 5's model: the first fed input of the partition not finished, else one past the last fed.
let private expectedCommit (s: Scenario) (run: Run) (finished: Set<Position>) p =
    let fed =
        s.Inputs |> List.filter (fun i -> i.Partition = p && i.Offset < run.Next[p])

    match fed |> List.tryFind (fun i -> not (finished.Contains(positionOf i))) with
    | Some i -> i.Offset
    | None ->
        match fed with
        | [] -> 0L
        | _ -> (List.last fed).Offset + 1L

/// Pipes of maps, filters and unfolds only, each item its own sink call.
let private flatPipes = gen {
    let! n = Gen.choose (1, 3)

    let! stages =
        Gen.listOfLength
            n
            (Gen.oneof [
                Gen.choose (1, 99) |> Gen.map MapAdd
                Gen.choose (2, 5) |> Gen.map FilterOut
                Gen.choose (0, 3) |> Gen.map Unfold
            ])

    return { Stages = stages; Tail = Plain None }
}

// ---- property 6: demux memory ----

/// One step of the demux memory scenario.
type DemuxCommand =
    /// A message for a new key (fresh) or for a key seen before (pick modulo their number).
    | FeedKey of fresh: bool * pick: int
    /// The clock moves on (a tick).
    | Wait of seconds: int

/// Many keys over time through one demux with an idle limit.
type DemuxScenario = {
    IdleSeconds: int
    Agg: AggSpec option
    Commands: DemuxCommand list
}

let private demuxScenarios =
    let genCommand =
        Gen.frequency [
            4, Gen.map2 (fun f p -> FeedKey(f, p)) (Gen.elements [ true; false ]) (Gen.choose (0, 20))
            2, Gen.choose (0, 6) |> Gen.map Wait
        ]

    let generator =
        Gen.sized (fun size -> gen {
            let! idle = Gen.choose (1, 5)
            let! agg = Gen.elements [ None; Some(ByCount 2); Some(ByAge 3) ]
            let! length = Gen.choose (0, 4 * size)
            let! commands = Gen.listOfLength length genCommand

            return {
                IdleSeconds = idle
                Agg = agg
                Commands = commands
            }
        })

    Arb.fromGenShrink (
        generator,
        (fun s -> shrinkList s.Commands |> Seq.map (fun c -> { s with Commands = c }))
    )

/// The demux memory property: live substreams equal the keys active within the idle limit at every
/// step, evicted substreams lose nothing, and memory does not follow the keys ever seen.
let private demuxMemory (s: DemuxScenario) =
    let tp = tpOf 0

    let pipe =
        build {
            Stages = []
            Tail = Demux(None, s.IdleSeconds, [], s.Agg)
        }

    let idle = TimeSpan.FromSeconds(float s.IdleSeconds)
    let d0 = TestDriver.start pipe |> TestDriver.assign tp

    let folder (d, keys: string list, live: Map<string, DateTimeOffset>, offset, maxLive, errors) command =
        let d, keys, live, offset =
            match command with
            | FeedKey(fresh, pick) ->
                let key =
                    if fresh || keys.IsEmpty then
                        sprintf "k%d" keys.Length
                    else
                        keys[pick % keys.Length]

                let input = {
                    Partition = 0
                    Offset = offset
                    Key = key
                    Value = int (offset % 100L)
                }

                let keys = if List.contains key keys then keys else keys @ [ key ]
                TestDriver.feed (messageOf input) d, keys, Map.add key (TestDriver.now d) live, offset + 1L
            | Wait secs ->
                let d = TestDriver.advance (TimeSpan.FromSeconds(float secs)) d
                let now = TestDriver.now d
                d, keys, live |> Map.filter (fun _ last -> now - last < idle), offset

        let errors =
            if TestDriver.liveSubstreams d <> live.Count then
                sprintf
                    "after %A: %d live substreams, but %d keys were active within %O (%d seen ever)"
                    command
                    (TestDriver.liveSubstreams d)
                    live.Count
                    idle
                    keys.Length
                :: errors
            else
                errors

        d, keys, live, offset, max maxLive live.Count, errors

    let d, keys, _, count, maxLive, errors =
        ((d0, [], Map.empty, 0L, 0, []), s.Commands) ||> List.fold folder

    let d = TestDriver.flush d

    let written =
        TestDriver.written "sink" d
        |> List.concat
        |> List.map (fun (it: Item) -> it.Origin.Offset)

    let errors = [
        yield! List.rev errors
        if TestDriver.liveSubstreams d <> 0 then
            yield sprintf "%d substreams alive after shutdown" (TestDriver.liveSubstreams d)
        if List.sort written <> [ 0L .. count - 1L ] then
            yield sprintf "written offsets %A, expected 0..%d once each" (List.sort written) (count - 1L)
        if TestDriver.committed tp d <> count then
            yield sprintf "committed %d, expected %d" (TestDriver.committed tp d) count
    ]

    verdict errors
    |> Prop.classify (keys.Length > 2 * maxLive) "keys ever seen > 2 x most live substreams"

/// What a run shows of itself: the driver's reports (sink calls, async calls, outputs, failures,
/// refusals, commits) and the live substreams.
let private observed (run: Run) =
    let d = run.Driver

    sprintf
        "%A"
        (TestDriver.sinkCalls d,
         TestDriver.asyncCalls d,
         TestDriver.outputs d,
         TestDriver.failures d
         |> List.map (fun f -> f.Stage, f.Position, f.Tokens, f.Error.Message),
         TestDriver.refused d,
         TestDriver.commitHistory d,
         TestDriver.liveSubstreams d,
         run.Next)

/// A run is a value: runs a scenario's first half (`old`), then its second half from `old`, then
/// other commands (the second half reversed) from `old` again, and from the newer run; compares each
/// with a fresh run of the same commands, and the newer run with itself before the branch.
let private olderRunsStayValid (s: Scenario) =
    let half = List.length s.Commands / 2
    let first, second = List.splitAt half s.Commands

    let other =
        match List.rev second with
        | reversed when reversed = second && not reversed.IsEmpty -> List.tail reversed
        | reversed -> reversed

    let run from commands = List.fold (step s) from commands
    let old = run (start s) first
    let newer = run old second
    let newerBefore = observed newer
    let branch = run old other
    let freshBranch = run (run (start s) first) other

    [
        if observed branch <> observed freshBranch then
            sprintf "the older run continued with %A differs from a fresh run of the same commands" other
        if observed newer <> newerBefore then
            "the newer run changed when its older run was continued"
        if observed (run newer other) <> observed (run (run (start s) s.Commands) other) then
            sprintf "the newer run continued with %A (after the branch) differs from a fresh run" other
    ]

let tests =
    testList "Pipe properties" [
        testPropertyWithConfig config "the commit point never passes an offset whose processing is unfinished"
        <| Prop.forAll chaos (fun s ->
            let run, violations = runChecking s (fun run -> unfinishedCommitted s run.Driver)

            let violations =
                match violations with
                | [] ->
                    let run = settle 3 s run
                    unfinishedCommitted s run.Driver |> List.map (sprintf "after settling: %s")
                | vs -> vs

            verdict violations |> Prop.classify (kinds s <> "") (kinds s))

        testPropertyWithConfig
            config
            "the commit point of a partition never moves backwards within an assignment"
        <| Prop.forAll chaos (fun s ->
            let run, _ = runChecking s (fun _ -> [])
            let run = settle 3 s run
            verdict (backwards run.Driver))

        testPropertyWithConfig
            config
            "after replaying from the commit points every input reaches the sink at least once"
        <| Prop.forAll chaos (fun s ->
            let run, _ = runChecking s (fun _ -> [])
            let run = settle 3 s run
            verdict (delivered false s run) |> Prop.classify (kinds s <> "") (kinds s))

        testPropertyWithConfig
            config
            "without crashes, failures or rebalances every input reaches the sink exactly once"
        <| Prop.forAll (scenarios Calm) (fun s ->
            let run, _ = runChecking s (fun _ -> [])
            let run = settle 0 s run
            let refused = TestDriver.refused run.Driver |> List.map (sprintf "refused %A")
            verdict (delivered true s run @ refused))

        testPropertyWithConfig config "per-key order is preserved through demux substreams and aggregates"
        <| Prop.forAll chaos (fun s ->
            let run, _ = runChecking s (fun _ -> [])
            let run = settle 3 s run

            verdict (outOfOrder run.Driver)
            |> Prop.classify
                (match s.Pipe.Tail with
                 | Plain _ -> false
                 | _ -> true)
                "demux")

        testPropertyWithConfig
            config
            "filter or unfold to zero completes the offset, unfold to n only when all n are written"
        <| Prop.forAll (scenariosOf flatPipes 2 Failing) (fun s ->
            let exact (run: Run) = [
                let finished = finished s (TestDriver.sinkCalls run.Driver)

                for tp, c in Ledger.commitPoints (TestDriver.ledger run.Driver) do
                    let e = expectedCommit s run finished tp.Partition

                    if c <> e then
                        sprintf "%O: ledger commit point %d, but the first unfinished offset is %d" tp c e
            ]

            let _, violations = runChecking s exact
            let counts = s.Inputs |> List.map (leaves s.Pipe >> List.length)

            verdict violations
            |> Prop.classify (List.contains 0 counts) "some input dropped"
            |> Prop.classify (List.exists (fun n -> n >= 2) counts) "some input unfolded to 2+")

        testPropertyWithConfig
            config
            "an older run continued with other commands gives what a fresh run gives, and the newer run stays as it was"
        <| Prop.forAll chaos (fun s ->
            verdict (olderRunsStayValid s)
            |> Prop.classify
                (match s.Pipe.Tail with
                 | Plain _ -> false
                 | _ -> true)
                "demux"
            |> Prop.classify s.Deferred "deferred calls")

        testPropertyWithConfig
            config
            "memory held by demux is bounded by the live substreams, not the keys ever seen"
        <| Prop.forAll demuxScenarios demuxMemory
    ]
