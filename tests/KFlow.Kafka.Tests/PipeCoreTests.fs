// Tests for src/KFlow.Kafka/PipeCore.fs, the C# face of Pipe: its stages run on the deterministic
// test driver (the facade's tests run them on the embedded cluster).
module KFlow.Kafka.Tests.PipeCoreTests

open System
open System.Collections.Generic
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

let private messages (values: (string * int) list) = [
    for offset, (key, value) in List.indexed values -> Message.create tp (int64 offset) key value
]

let private run pipe values =
    pipe
    |> TestDriver.start
    |> TestDriver.assign tp
    |> TestDriver.feedAll (messages values)

let private emit (values: 'b list) =
    values |> List.toArray :> IReadOnlyList<'b>

/// A Stateful stage summing every 3 values; with `flush`, a flush emits the partial sum.
let private sums (flush: bool) =
    let add =
        Func<int list, int, KeyValuePair<int list, IReadOnlyList<int>>>(fun held v ->
            match v :: held with
            | [ _; _; _ ] as three -> KeyValuePair([], emit [ List.sum three ])
            | more -> KeyValuePair(more, emit []))

    if flush then
        PipeCore.Stateful(
            Pipe.source<int>,
            "sums",
            [],
            add,
            flush =
                Func<int list, IReadOnlyList<int>>(fun held ->
                    emit (if held.IsEmpty then [] else [ List.sum held ]))
        )
    else
        PipeCore.Stateful(Pipe.source<int>, "sums", [], add)

let private values (driver: TestDriver<'i, 'o>) =
    TestDriver.outputs driver |> List.map _.Value

let tests =
    testList "PipeCore" [
        test "Stateful holds its inputs until it emits, so the commit point waits for the emission" {
            let d = run (sums true) [ for i in 0..4 -> "", i ]
            Expect.equal (values d) [ 0 + 1 + 2 ] "one sum of three"
            Expect.equal (TestDriver.committed tp d) 3L "offsets 3 and 4 are held"
            let d = TestDriver.flush d
            Expect.equal (values d) [ 3; 3 + 4 ] "the flush emits the partial sum"
            Expect.equal (TestDriver.committed tp d) 5L "then everything is finished"
        }
        test "Stateful without flush completes the held inputs on flush without output" {
            let d = run (sums false) [ for i in 0..4 -> "", i ] |> TestDriver.flush
            Expect.equal (values d) [ 3 ] "no output for the held values"
            Expect.equal (TestDriver.committed tp d) 5L "their offsets finish"
        }
        test "Stateful's tick may emit what is held; with nothing held its values are discarded" {
            let pipe =
                PipeCore.Stateful(
                    Pipe.source<int>,
                    "latest",
                    0,
                    Func<int, int, KeyValuePair<int, IReadOnlyList<int>>>(fun _ v -> KeyValuePair(v, emit [])),
                    tick =
                        Func<int, DateTimeOffset, KeyValuePair<int, IReadOnlyList<int>>>(fun s _ ->
                            KeyValuePair(s, emit [ s ]))
                )

            let d = run pipe [ "", 7; "", 8 ]
            Expect.equal (TestDriver.committed tp d) 0L "both held"
            let d = d |> TestDriver.advance (TimeSpan.FromSeconds 1.)
            Expect.equal (values d) [ 8 ] "the tick emits the latest value for both inputs"
            Expect.equal (TestDriver.committed tp d) 2L "both finished with it"
            let d = d |> TestDriver.advance (TimeSpan.FromSeconds 1.)
            Expect.equal (values d) [ 8 ] "nothing held: the next tick's value is discarded"
        }
        test "Mfd drops what f rejects, keys the rest and runs the stages after it per key" {
            let pipe =
                PipeCore.Mfd(
                    Pipe.source<int>,
                    Func<int, struct (bool * string * int)>(fun v ->
                        if v % 3 = 0 then
                            struct (false, "", 0)
                        else
                            struct (true, $"r{v % 2}", v))
                )
                |> Pipe.aggregate (Buffer.count 2)
                |> Pipe.join

            let d = run pipe [ for i in 0..7 -> "ignored", i ]

            Expect.equal
                (values d)
                [ [ 2; 4 ]; [ 1; 5 ] ]
                "per-key pairs in completion order, multiples of 3 dropped"

            Expect.equal (TestDriver.committed tp d) 7L "7 is held in its key's batch"
            Expect.stringContains (Pipe.describe pipe) "mfd" "the stage is named mfd"
        }
        test "RouteDependent builds each key's stages on its first message" {
            let built = ResizeArray<string>()

            let pipe =
                PipeCore.RouteDependent(
                    Pipe.source<int>,
                    Func<int, string>(fun v -> $"k{v % 2}"),
                    Func<string, Pipe<int, int>, Pipe<int, int>>(fun key empty ->
                        built.Add key

                        if key = "k0" then
                            empty |> Pipe.map (fun v -> v * 10)
                        else
                            empty |> Pipe.filter (fun v -> v > 2))
                )

            let d = run pipe [ for i in 0..5 -> "", i ]
            Expect.equal (values d) [ 0; 20; 3; 40; 5 ] "k0 multiplied, k1 filtered"
            Expect.equal (List.ofSeq built) [ "k0"; "k1" ] "one route per key"
            Expect.equal (TestDriver.committed tp d) 6L "all finished"
        }
        test "a route that leaves a split open fails its message, which stays unfinished" {
            let pipe =
                PipeCore.RouteDependent(
                    Pipe.source<int>,
                    Func<int, string>(string),
                    Func<string, Pipe<int, int>, Pipe<int, int>>(fun _ empty -> empty |> Pipe.split string)
                )

            let d = run pipe [ "", 1 ]
            Expect.isNonEmpty (TestDriver.failures d) "the failure is reported"
            Expect.equal (TestDriver.committed tp d) 0L "not committed"
        }
        test "AssembleChunks combines an object's parts in index order once all arrived" {
            let pipe =
                PipeCore.AssembleChunks(
                    Pipe.source<string>,
                    Func<string, struct (string * int * int * string)>(fun s ->
                        let p = s.Split ':'
                        struct (p[0], int p[1], 3, p[2])),
                    Func<IReadOnlyList<string>, string>(fun parts -> String.Join("+", parts))
                )

            let d =
                pipe
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [
                    for offset, v in List.indexed [ "a:2:z"; "b:0:x"; "a:0:x"; "a:1:y"; "b:1:y" ] ->
                        Message.create tp (int64 offset) "" v
                ]

            Expect.equal (values d) [ "x+y+z" ] "a is complete"
            Expect.equal (TestDriver.committed tp d) 1L "b's chunk at offset 1 is held"
        }
    ]
