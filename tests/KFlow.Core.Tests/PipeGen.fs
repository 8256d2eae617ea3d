// Generators for the pipe properties: random pipes from the stage set (PipeSpec), inputs over
// partitions and keys with offset gaps, shrinkable command lists.
module KFlow.Core.Tests.PipeGen

open FsCheck
open FsCheck.FSharp
open KFlow.Core.Tests.PipeSpec

/// One step of a generated run of the test driver.
type Command =
    /// Reads the next message of a partition (index modulo the partition count), as a consumer would.
    | Feed of partition: int
    | Advance of seconds: int
    /// Succeeds the pending sink call at this index (modulo the pending count).
    | Succeed of pick: int
    | Fail of pick: int
    | Commit
    | Crash
    | Replay
    /// Runs the pending async call at this index (AsyncMode Defer).
    | RunAsync of pick: int
    /// Fails the pending async call at this index: its input stays unfinished.
    | FailAsync of pick: int
    | Revoke of partition: int
    | Assign of partition: int

/// A generated run: a pipe, its inputs, driver settings and commands.
type Scenario = {
    Pipe: PipeSpec
    Partitions: int
    Inputs: Input list
    AutoCommit: bool
    /// Async maps deferred (calls answered by RunAsync/FailAsync) rather than run inline.
    Deferred: bool
    Commands: Command list
}

// ---- generators ----

let private genStage =
    Gen.oneof [
        Gen.choose (1, 99) |> Gen.map MapAdd
        Gen.choose (2, 5) |> Gen.map FilterOut
        Gen.choose (0, 3) |> Gen.map Unfold
        Gen.constant Delay
        Gen.choose (1, 99) |> Gen.map AsyncAdd
    ]

let private genStages max = gen {
    let! n = Gen.choose (0, max)
    return! Gen.listOfLength n genStage
}

let private genAgg =
    Gen.frequency [
        2, Gen.constant None
        2, Gen.choose (1, 4) |> Gen.map (ByCount >> Some)
        1, Gen.choose (1, 5) |> Gen.map (ByAge >> Some)
        1, Gen.choose (1, 12) |> Gen.map (ByBytes >> Some)
    ]

let private genTail =
    Gen.frequency [
        1, genAgg |> Gen.map Plain
        2,
        gen {
            let! buckets = Gen.elements [ None; Some 2 ]
            let! idle = Gen.choose (1, 8)
            let! subs = genStages 2
            let! agg = genAgg
            return Demux(buckets, idle, subs, agg)
        }
        1, Gen.map3 (fun m subs agg -> Mfd(m, subs, agg)) (Gen.choose (2, 5)) (genStages 2) genAgg
        1, Gen.map3 (fun a b agg -> Route(a, b, agg)) (genStages 2) (genStages 2) genAgg
        1,
        Gen.map3
            (fun subs agg joined -> Split(subs, agg, joined))
            (genStages 2)
            genAgg
            (Gen.elements [ true; false ])
    ]

/// Random pipes from the whole stage set.
let genPipe = gen {
    let! stages = genStages 3
    let! tail = genTail
    return { Stages = stages; Tail = tail }
}

/// Inputs of `partitions` partitions: increasing offsets with gaps, keys from a small set.
let genInputs (partitions: int) =
    Gen.sized (fun size -> gen {
        let! perPartition =
            [ 0 .. partitions - 1 ]
            |> List.map (fun p -> gen {
                let! count = Gen.choose (0, min 12 (2 + size / 3))
                let! first = Gen.choose (0, 3)

                let! gaps =
                    Gen.listOfLength count (Gen.frequency [ 3, Gen.constant 1; 1, Gen.choose (2, 4) ])

                let! keys = Gen.listOfLength count (Gen.elements [ "a"; "b"; "c"; "d" ])
                let! values = Gen.listOfLength count (Gen.choose (0, 99))

                let offsets =
                    gaps |> List.scan (+) first |> List.tail |> List.map (fun o -> int64 (o - 1))

                return
                    List.zip3 offsets keys values
                    |> List.map (fun (o, k, v) -> {
                        Partition = p
                        Offset = o
                        Key = k
                        Value = v
                    })
            })
            |> Gen.sequenceToList

        return List.concat perPartition
    })

/// Which commands a scenario may hold.
type Mode =
    /// Everything: sink failures, crashes, replays, revokes and assigns.
    | Chaos
    /// Reads, ticks, sink successes and commits only.
    | Calm
    /// Calm plus sink failures.
    | Failing

let private genCommand (mode: Mode) =
    let p = Gen.choose (0, 2)
    let pick = Gen.choose (0, 5)

    Gen.frequency [
        yield 12, Gen.map Feed p
        yield 3, Gen.choose (0, 4) |> Gen.map Advance
        yield 8, Gen.map Succeed pick
        yield 2, Gen.constant Commit
        yield 5, Gen.map RunAsync pick
        if mode <> Calm then
            yield 2, Gen.map Fail pick
        if mode = Chaos then
            yield 1, Gen.constant Crash
            yield 1, Gen.constant Replay
            yield 1, Gen.map FailAsync pick
            yield 1, Gen.map Revoke p
            yield 2, Gen.map Assign p
    ]

/// Scenarios over a pipe generator with the commands of a mode.
let genScenarioWith (pipe: Gen<PipeSpec>) (maxPartitions: int) (mode: Mode) =
    Gen.sized (fun size -> gen {
        let! spec = pipe
        let! partitions = Gen.choose (1, maxPartitions)
        let! inputs = genInputs partitions
        let! autoCommit = Gen.elements [ true; false ]
        let! deferred = Gen.elements [ true; false ]
        let! length = Gen.choose (0, 3 * size)
        let! commands = Gen.listOfLength length (genCommand mode)

        return {
            Pipe = spec
            Partitions = partitions
            Inputs = inputs
            AutoCommit = autoCommit
            Deferred = deferred
            Commands = commands
        }
    })

/// Shorter lists: halves first, then one element less.
let shrinkList (xs: 'a list) : 'a list seq = seq {
    let n = List.length xs

    if n > 1 then
        yield List.take (n / 2) xs
        yield List.skip (n / 2) xs

    for i in 0 .. n - 1 -> List.removeAt i xs
}

let private shrinkSpec (spec: PipeSpec) = seq {
    for s in shrinkList spec.Stages -> { spec with Stages = s }

    match spec.Tail with
    | Plain None -> ()
    | Plain(Some _) -> yield { spec with Tail = Plain None }
    | Demux(b, idle, subs, agg) ->
        yield { spec with Tail = Plain agg }

        for s in shrinkList subs ->
            {
                spec with
                    Tail = Demux(b, idle, s, agg)
            }
    | Mfd(m, subs, agg) ->
        yield { spec with Tail = Plain agg }

        for s in shrinkList subs -> { spec with Tail = Mfd(m, s, agg) }
    | Split(subs, agg, joined) ->
        yield { spec with Tail = Plain agg }

        for s in shrinkList subs ->
            {
                spec with
                    Tail = Split(s, agg, joined)
            }
    | Route(a, b, agg) ->
        yield { spec with Tail = Plain agg }

        yield {
            spec with
                Tail = Demux(None, 60, a, agg)
        }
}

/// Shrinks commands, inputs and the pipe.
let shrinkScenario (s: Scenario) = seq {
    for c in shrinkList s.Commands -> { s with Commands = c }
    for i in shrinkList s.Inputs -> { s with Inputs = i }
    for p in shrinkSpec s.Pipe -> { s with Pipe = p }

    if s.Deferred then
        yield { s with Deferred = false }
}

/// Shrinkable scenarios over a pipe generator.
let scenariosOf (pipe: Gen<PipeSpec>) (maxPartitions: int) (mode: Mode) =
    Arb.fromGenShrink (genScenarioWith pipe maxPartitions mode, shrinkScenario)

/// Shrinkable scenarios over random pipes of the whole stage set and up to 3 partitions.
let scenarios (mode: Mode) = scenariosOf genPipe 3 mode
