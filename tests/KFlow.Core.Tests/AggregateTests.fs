// Tests for src/KFlow.Core/Aggregate.fs: the buffer's limits and the aggregate stage's commit points
// through the test driver (sinking batches, revoke, shutdown, crash and replay), and the buffer's own
// batching step against a model buffer written as a user aggregator.
module KFlow.Core.Tests.AggregateTests

open System
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open KFlow

let private tp = TopicPartition.create "t" 0
let private tp1 = TopicPartition.create "t" 1
let private ignoreWrite _ = Task.CompletedTask

let private manual = {
    TestDriver.options with
        SinkMode = Manual
}

let private messages (tp: TopicPartition) offsets = [ for o in offsets -> Message.create tp o "k" (int o) ]

let private batches (aggregator: Aggregator<int, int list>) =
    Pipe.source<int> |> Pipe.aggregate aggregator |> Pipe.sink "db" ignoreWrite

let private written d : int list list = TestDriver.written "db" d

/// A pipe started with automatic sinks, tp assigned.
let private startedOnTp pipe =
    pipe |> TestDriver.start |> TestDriver.assign tp

/// One event for a buffer's stage: a message (its value, and 1 or 2 tokens), a tick some seconds
/// later, a flush, a revoke or an assign.
type private BufferEvent =
    | Value of value: int * twoTokens: bool
    | TickAfter of seconds: int
    | FlushNow
    | RevokeNow
    | AssignNow

let private genBufferCase =
    gen {
        let! count = Gen.elements [ None; Some 1; Some 2; Some 3; Some 5 ]
        let! bytes = Gen.elements [ None; Some 1L; Some 4L; Some 9L ]
        let! age = Gen.elements [ None; Some 1; Some 3 ]

        let options = {
            Buffer.options<int> with
                MaxCount = count
                MaxBytes = bytes
                Size = (fun v -> int64 (v % 4))
                MaxAge = age |> Option.map (fun s -> TimeSpan.FromSeconds(float s))
        }

        let event =
            Gen.frequency [
                8,
                Gen.map2
                    (fun v two -> Value(v, two))
                    (Gen.choose (0, 20))
                    (Gen.frequency [ 4, Gen.constant false; 1, Gen.constant true ])
                3, Gen.map TickAfter (Gen.choose (0, 2))
                1, Gen.constant FlushNow
                1, Gen.constant RevokeNow
                1, Gen.constant AssignNow
            ]

        let! events = Gen.listOf event
        return options, events
    }
    |> Gen.filter (fun (o, _) -> o.MaxCount.IsSome || o.MaxBytes.IsSome || o.MaxAge.IsSome)

/// A buffer as a user would write it with Aggregator.create: values newest first, their count and
/// size, and when the first arrived; the batch goes out when a limit is reached (age: on a tick or an
/// add), and on flush.
let private modelBuffer (options: BufferOptions<int>) =
    let old (now: DateTimeOffset) (values: int list, _: int64, since: DateTimeOffset) =
        not values.IsEmpty
        && (match options.MaxAge with
            | Some age -> now - since >= age
            | None -> false)

    let full (values: int list, bytes: int64, _: DateTimeOffset) =
        (match options.MaxCount with
         | Some n -> values.Length >= n
         | None -> false)
        || (match options.MaxBytes with
            | Some n -> bytes >= n
            | None -> false)

    let empty = [], 0L, DateTimeOffset.MinValue

    Aggregator.create
        empty
        (fun now v ((values, bytes, since) as s) ->
            let s' =
                v :: values, bytes + options.Size v, (if values.IsEmpty then now else since)

            let values', _, _ = s'

            if full s' || old now s' then
                empty, Some(List.rev values')
            else
                s', None)
        (fun now ((values, _, _) as s) -> if old now s then empty, Some(List.rev values) else s, None)
        (fun (values, _, _) -> if values.IsEmpty then None else Some(List.rev values))

/// Each step's output of a stage fed `events` (offsets from 0; a second token is a part of the
/// same offset), as text.
let private stepped (stage: Stage<int, int list>) (events: BufferEvent list) =
    let mutable instance = Stage.start stage
    let mutable now = DateTimeOffset.UnixEpoch

    [
        for i, event in List.indexed events do
            let position = Position.create tp (int64 i)
            let token = { Position = position; Epoch = 1 }

            let e =
                match event with
                | Value(v, two) ->
                    Message {
                        Value = v
                        Tokens =
                            (if two then
                                 [ token; { token with Epoch = 2 } ]
                             else
                                 [ token ])
                        Key = string i
                        Position = position
                        Timestamp = now.AddMilliseconds(float i)
                    }
                | TickAfter seconds ->
                    now <- now.AddSeconds(float seconds)
                    Tick
                | FlushNow -> Flush
                | RevokeNow -> Revoked tp
                | AssignNow -> Assigned tp

            let instance', output = Stage.step now e instance
            instance <- instance'
            sprintf "%A" (output.Emitted, output.Effects)
    ]

let tests =
    testList "Aggregate" [
        test "aggregate of 3 over offsets 0..6 commits 3 then 6, each only after its batch is sunk" {
            let d =
                batches (Buffer.count 3)
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 0L .. 6L ])

            Expect.equal
                (TestDriver.pending d |> List.map (fun c -> unbox<int list> c.Value))
                [ [ 0; 1; 2 ]; [ 3; 4; 5 ] ]
                "two batches"

            Expect.equal (TestDriver.committed tp d) 0L "nothing sunk yet"
            let d = d |> TestDriver.succeed 1
            Expect.equal (TestDriver.committed tp d) 3L "first batch sunk"
            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 6L "second batch sunk; 6 is still buffered"

            Expect.equal
                (TestDriver.commitHistory d |> List.map (fun c -> c.Offset))
                [ 0L; 3L; 6L ]
                "3 then 6"
        }
        test "a batch holds the tokens of all its inputs" {
            let d =
                batches (Buffer.count 2)
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 4L; 9L ])

            let call = TestDriver.pending d |> List.exactlyOne
            Expect.equal (call.Tokens |> List.map (fun t -> t.Position.Offset)) [ 4L; 9L ] "both tokens"
        }
        test "a crash while a batch is buffered replays it" {
            let d =
                batches (Buffer.count 3)
                |> startedOnTp
                |> TestDriver.feedAll (messages tp [ 0L .. 4L ])

            Expect.equal (TestDriver.committed tp d) 3L "3 and 4 are buffered"

            let d =
                d
                |> TestDriver.crash
                |> TestDriver.replay
                |> TestDriver.feed (Message.create tp 5L "k" 5)

            Expect.equal (written d) [ [ 0; 1; 2 ]; [ 3; 4; 5 ] ] "the buffered values were read again"
            Expect.equal (TestDriver.committed tp d) 6L "all sunk"
        }
        test "flushes on partition revoke" {
            let d =
                batches (Buffer.count 10)
                |> startedOnTp
                |> TestDriver.feedAll (messages tp [ 0L; 1L ])
                |> TestDriver.revoke tp

            Expect.equal (written d) [ [ 0; 1 ] ] "the partial batch was written"
            Expect.equal (TestDriver.committed tp d) 2L "and committed before the revoke"
        }
        test "flushes on shutdown" {
            let d =
                batches (Buffer.count 10)
                |> startedOnTp
                |> TestDriver.feedAll (messages tp [ 0L; 2L; 5L ])
                |> TestDriver.flush

            Expect.equal (written d) [ [ 0; 2; 5 ] ] "written"
            Expect.equal (TestDriver.committed tp d) 6L "one past the last delivered offset"
        }
        test "a batch by bytes is emitted when the size reaches the limit" {
            let d =
                batches (Buffer.bytes (fun x -> int64 x) 10L)
                |> startedOnTp
                |> TestDriver.feedAll [
                    for o, v in [ 0L, 4; 1L, 5; 2L, 1; 3L, 7; 4L, 1 ] -> Message.create tp o "k" v
                ]

            Expect.equal (written d) [ [ 4; 5; 1 ] ] "10 reached; 7 and 1 held"
            Expect.equal (TestDriver.committed tp d) 3L "the held ones are open"
        }
        test "a batch by age is emitted on the first tick after its first value's max age" {
            let d =
                batches (Buffer.age (TimeSpan.FromSeconds 10.0))
                |> startedOnTp
                |> TestDriver.feed (Message.create tp 0L "k" 0)
                |> TestDriver.advance (TimeSpan.FromSeconds 6.0)
                |> TestDriver.feed (Message.create tp 1L "k" 1)
                |> TestDriver.advance (TimeSpan.FromSeconds 3.0)

            Expect.isEmpty (written d) "9 s old"
            let d = d |> TestDriver.advance (TimeSpan.FromSeconds 1.0)
            Expect.equal (written d) [ [ 0; 1 ] ] "10 s old"
            Expect.equal (TestDriver.committed tp d) 2L "committed"
        }
        test "revoking one partition flushes the buffer holding both, and the other partition commits too" {
            let d =
                batches (Buffer.count 10)
                |> startedOnTp
                |> TestDriver.assign tp1
                |> TestDriver.feedAll [ Message.create tp 0L "k" 0; Message.create tp1 0L "k" 10 ]
                |> TestDriver.revoke tp

            Expect.equal (written d) [ [ 0; 10 ] ] "one batch"
            Expect.equal (TestDriver.committed tp1 d) 1L "tp1 committed"
        }
        test "a user aggregator that emits nothing on flush completes what it held" {
            let sum =
                Aggregator.create 0 (fun _ (x: int) s -> s + x, None) (fun _ s -> s, None) (fun _ -> None)

            let d =
                Pipe.source<int>
                |> Pipe.aggregate sum
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 0L; 1L ])

            Expect.equal (TestDriver.committed tp d) 0L "held"
            let d = d |> TestDriver.flush
            Expect.equal (TestDriver.committed tp d) 2L "completed on flush"
            Expect.isEmpty (TestDriver.outputs d) "no output"
        }
        test "a buffer without a limit, or with a limit below 1, is refused" {
            Expect.throwsT<ArgumentException>
                (fun () -> Buffer.create Buffer.options<int> |> ignore)
                "no limit"

            Expect.throwsT<ArgumentException> (fun () -> Buffer.count<int> 0 |> ignore) "count 0"
        }
        testPropertyWithConfig
            Config.fsCheck
            "a ready-made buffer's stage emits what a model buffer written with Aggregator.create emits"
        <| Prop.forAll (Arb.fromGen genBufferCase) (fun (options, events) ->
            Expect.equal
                (stepped (Aggregator.stage (Buffer.create options)) events)
                (stepped (Aggregator.stage (modelBuffer options)) events)
                "the same outputs and effects at every step")
    ]
