// Tests for src/KFlow.Core/AsyncQueue.fs: the two-list queue with counts behaves exactly like the
// plain list of entries it replaced, under any sequence of pushes, answers and broadcast events.
module KFlow.Core.Tests.AsyncQueueTests

open Expecto
open KFlow

let private partitions = [| TopicPartition.create "t" 0; TopicPartition.create "t" 1 |]

let private envelope (n: int) : Envelope<obj> =
    let tp = partitions[n % 2]

    let position = {
        TopicPartition = tp
        Offset = int64 n
    }

    {
        Value = (n :> obj)
        Tokens = [ { Position = position; Epoch = 1 } ]
        Key = ""
        Position = position
        Timestamp = System.DateTimeOffset.UnixEpoch
    }

/// The list semantics the queue replaced (RunState's functions before AsyncQueue).
module private Model =
    let started (queue: AsyncEntry list) =
        queue
        |> List.sumBy (function
            | Started _ -> 1
            | _ -> 0)

    let canStart parallelism queue =
        started queue < parallelism
        && not (
            queue
            |> List.exists (function
                | Queued _ -> true
                | _ -> false)
        )

    let withResult id result (queue: AsyncEntry list) =
        queue
        |> List.map (function
            | Started(c, e, None) when c = id -> Started(c, e, Some result)
            | entry -> entry)

    let ready (queue: AsyncEntry list) =
        let going =
            queue
            |> List.takeWhile (function
                | Started(_, _, Some _)
                | Held _ -> true
                | _ -> false)

        going, List.skip going.Length queue

    let startWaiting parallelism start (queue: AsyncEntry list) =
        (parallelism - started queue, queue)
        ||> List.mapFold (fun free entry ->
            match entry with
            | Queued env when free > 0 -> start env, free - 1
            | entry -> entry, free)
        |> fst

    let holdIn hold event (queue: AsyncEntry list) =
        List.tryFindIndexBack (AsyncQueue.mustFollow event) queue
        |> Option.map (fun j -> List.insertAt (j + 1) (Held(hold, event)) queue)

/// An entry as comparable data.
let private shape entry =
    match entry with
    | Started(id, e, result) -> $"S{id}@{e.Position.Offset}:{result.IsSome}"
    | Queued e -> $"Q@{e.Position.Offset}"
    | Held(hold, event) -> $"H{hold}:%A{event}"

/// Applies operations (decoded from ints) to the queue and to the model; fails at the first
/// difference of entries, started count, emptiness or what goes on.
let private agree (parallelism: int) (ops: (int * int) list) =
    let mutable q = AsyncQueue.empty
    let mutable m: AsyncEntry list = []
    let mutable nextId = 1
    let mutable nextHold = 1
    let mutable n = 0

    let start env =
        let id = nextId
        nextId <- nextId + 1
        Started(id, env, None)

    for op, arg in ops do
        match abs op % 3 with
        | 0 ->
            // A push, as PipeRun.pushAt does it.
            let env = envelope n
            n <- n + 1

            Expect.equal (AsyncQueue.canStart parallelism q) (Model.canStart parallelism m) "canStart"

            let entry =
                if Model.canStart parallelism m then
                    start env
                else
                    Queued env

            q <- AsyncQueue.enqueue entry q
            m <- m @ [ entry ]
        | 1 ->
            // A resume of one unanswered call, as PipeRun.settle does it.
            let unanswered =
                m
                |> List.choose (function
                    | Started(id, _, None) -> Some id
                    | _ -> None)

            if not unanswered.IsEmpty then
                let id = unanswered[abs arg % unanswered.Length]

                let result: Result<obj, exn> =
                    if arg % 5 = 0 then Error(exn "failed") else Ok(id :> obj)

                // The oldest call's answer takes answerOldest's path, the others withResult's.
                let goingQ, q' =
                    match AsyncQueue.answerOldest id q with
                    | ValueSome(struct (e, rest)) ->
                        let going, rest = AsyncQueue.ready rest
                        Started(id, e, Some result) :: going, rest
                    | ValueNone -> q |> AsyncQueue.withResult id result |> AsyncQueue.ready

                let goingM, m' = m |> Model.withResult id result |> Model.ready
                Expect.equal (List.map shape goingQ) (List.map shape goingM) "what goes on"
                // One start function for both, so both see the same new ids in the same order.
                let idsBefore = nextId
                q <- AsyncQueue.startWaiting parallelism start q'
                let idsAfter = nextId
                nextId <- idsBefore
                m <- Model.startWaiting parallelism start m'
                Expect.equal nextId idsAfter "the same inputs started"
        | _ ->
            let event =
                match abs arg % 4 with
                | 0 -> Flush
                | 1 -> Revoked partitions[0]
                | 2 -> Assigned partitions[1]
                | _ -> Tick

            let hold = nextHold
            nextHold <- nextHold + 1

            match AsyncQueue.holdIn hold event q, Model.holdIn hold event m with
            | Some q', Some m' ->
                q <- q'
                m <- m'
            | None, None -> ()
            | a, b -> failtestf "holdIn differs: queue %A, model %A" a.IsSome b.IsSome

        Expect.equal (AsyncQueue.toList q |> List.map shape) (List.map shape m) "the entries"
        Expect.equal (AsyncQueue.started q) (Model.started m) "started calls"
        Expect.equal (AsyncQueue.isEmpty q) m.IsEmpty "emptiness"

let tests =
    testList "AsyncQueue" [
        testPropertyWithConfig
            Config.fsCheck
            "behaves as the list of entries under any operations, parallelism 1"
        <| fun (ops: (int * int) list) -> agree 1 ops

        testPropertyWithConfig
            Config.fsCheck
            "behaves as the list of entries under any operations, parallelism 3"
        <| fun (ops: (int * int) list) -> agree 3 ops

        test "a Flush is held after every entry, a Tick never" {
            let q =
                AsyncQueue.empty
                |> AsyncQueue.enqueue (Started(1, envelope 0, None))
                |> AsyncQueue.enqueue (Queued(envelope 1))

            Expect.isNone (AsyncQueue.holdIn 1 Tick q) "a Tick passes"

            match AsyncQueue.holdIn 2 Flush q with
            | Some q -> Expect.equal (AsyncQueue.toList q |> List.map shape |> List.last) "H2:Flush" "last"
            | None -> failtest "a Flush waits behind the calls"
        }
    ]
