// Tests for src/KFlow.Kafka/SinkLanes.fs: writes of one lane (demux substream) run one at a time in
// request order (up to InFlight for a pipelined sink), lanes run side by side, a failed write stops its lane.
module KFlow.Kafka.Tests.SinkLanesTests

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Testing

let private tp = TopicPartition.create "t" 0

/// A write request of `lane` for a sink with `pipelining`, whose write records its name in `started`
/// and returns `result`.
let private requestWith
    (pipelining: SinkPipelining)
    (started: List<string>)
    (lane: string)
    (name: string)
    (result: Task)
    : SinkRequest =
    let position = { TopicPartition = tp; Offset = 0L }

    {
        Sink = "s"
        Envelope = {
            Value = (name :> obj)
            Tokens = []
            Key = lane
            Position = position
            Timestamp = System.DateTimeOffset.UnixEpoch
        }
        Write =
            fun _ ->
                started.Add name
                result
        Substream = lane
        Pipelining = pipelining
    }

/// A write request of an ordinary sink (one write at a time per lane).
let private request started lane name result =
    requestWith SinkPipelining.sequential started lane name result

/// A pipelined sink's settings allowing `inFlight` writes per lane, recording reservations and
/// releases as "reserve a" / "release a"; `ready name` is the reservation's task.
let private pipelined (inFlight: int) (events: List<string>) (ready: string -> Task) =
    SinkPipelining.create
        inFlight
        (fun v ->
            events.Add $"reserve {v}"
            ready (string v))
        (fun v -> events.Add $"release {v}")

/// Lanes whose ended writes are recorded (and succeed unless their task faulted) and whose pending
/// writes are collected.
let private lanes () =
    let ended = List<string>()
    let pending = List<SinkRequest>()

    let l =
        SinkLanes(
            (fun r error ->
                ended.Add(string r.Envelope.Value)
                error.IsNone),
            (fun r _ -> pending.Add r)
        )

    l, ended, pending

/// A pipelined sink "db" (4 writes in flight per lane) writing one value per write after 10 ms:
/// `fails value try` says whether try n (from 1) of a value fails (TimeoutException). Records the
/// values written, the most writes running at once and the values released.
type private PipelinedSink(fails: string -> int -> bool) =
    let tries = ConcurrentDictionary<string, int>()
    let mutable running = 0
    let mutable peak = 0
    member val Sunk = ConcurrentQueue<string>()
    member val Released = ConcurrentQueue<string>()
    member _.Peak = Volatile.Read &peak

    member this.Write(v: string) : Task = task {
        let now = Interlocked.Increment &running

        lock tries (fun () -> peak <- max peak now)

        try
            do! Task.Delay 10
            let attempt = tries.AddOrUpdate(v, 1, (fun _ n -> n + 1))

            if fails v attempt then
                raise (TimeoutException $"the sink timed out on {v} (try {attempt})")

            this.Sunk.Enqueue v
        finally
            Interlocked.Decrement &running |> ignore
    }

    member this.Pipe() =
        decoded ()
        |> Pipe.sinkWith
            (SinkPipelining.create 4 (fun _ -> Task.CompletedTask) (fun v -> this.Released.Enqueue(string v)))
            "db"
            this.Write

    /// The sink as if every value shared a key: each reservation is ready once the value reserved
    /// before it is released.
    member this.ChainedPipe() =
        let released = ConcurrentDictionary<string, TaskCompletionSource>()
        let mutable last = Task.CompletedTask

        let reserve (v: obj) =
            let mine = released.GetOrAdd(string v, fun _ -> TaskCompletionSource())
            let before = last
            last <- mine.Task
            before

        let release (v: obj) =
            this.Released.Enqueue(string v)
            released[string v].TrySetResult() |> ignore

        decoded ()
        |> Pipe.sinkWith (SinkPipelining.create 4 reserve release) "db" this.Write

let private values n = [ for i in 0 .. n - 1 -> $"k0:{i}" ]

let private sorted (q: ConcurrentQueue<string>) =
    q |> Seq.sortBy (fun v -> int (v.Split(':')[1])) |> List.ofSeq

let private quick = {
    Backoff.defaults with
        First = TimeSpan.FromMilliseconds 20.
        Max = TimeSpan.FromMilliseconds 100.
}

/// The error policies with 4 writes in flight in one lane (one partition, no demux).
let private policies =
    testList "with 4 writes in flight" [
        testCase
            "retry in place: the failing write is retried while the others go on; each value once, no restart, end offsets committed"
        <| fun () ->
            use cluster = clusterWith "p-retry" 1 1 60
            let sink = PipelinedSink(fun v n -> v = "k0:10" && n <= 2)
            let log = Log()
            let options = options cluster log "p-retry" [ "p-retry" ]

            let handle =
                runUntilSunk cluster log (seconds 30.) sink.Sunk 60 options (sink.Pipe())

            Expect.equal (sorted sink.Sunk) (values 60) "each value once"
            Expect.isGreaterThan sink.Peak 1 "writes ran side by side"
            Expect.equal handle.Stats.Restarts 0L "no restart"
            Expect.equal sink.Released.Count 60 "each write released once, the retried one after its retries"

        testCase
            "restart and replay: a write failing for good restarts the workflow, which writes it again; nothing lost, end offsets committed"
        <| fun () ->
            use cluster = clusterWith "p-restart" 1 1 60
            let sink = PipelinedSink(fun v n -> v = "k0:10" && n = 1)
            let log = Log()

            let options = {
                options cluster log "p-restart" [ "p-restart" ] with
                    SinkRetries = 0
            }

            let handle = Workflow.run options (sink.Pipe())

            waitUntil log (seconds 30.) "every value is sunk" (fun () -> (set sink.Sunk).Count = 60)

            stopped log handle
            expectEndOffsetsCommitted cluster options

            Expect.equal
                (sink.Sunk
                 |> Seq.distinct
                 |> Seq.sortBy (fun v -> int (v.Split(':')[1]))
                 |> List.ofSeq)
                (values 60)
                "every value"

            Expect.isGreaterThanOrEqual handle.Stats.Restarts 1L "the failure restarted the workflow"

        testCase
            "dead letter: the write failing after its retries is dead-lettered, the others are written once, end offsets committed"
        <| fun () ->
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("p-dead", 1)
            cluster.CreateTopic("p-dead-dlq", 1)
            produceKeyed cluster "p-dead" 1 60
            let sink = PipelinedSink(fun v _ -> v = "k0:10")
            let log = Log()

            let options = {
                options cluster log "p-dead" [ "p-dead" ] with
                    OnStageFailure = Map [ "db", RetryInPlace(1, quick, DeadLetter "p-dead-dlq") ]
            }

            let handle =
                runUntilSunk cluster log (seconds 30.) sink.Sunk 59 options (sink.Pipe())

            Expect.equal (sorted sink.Sunk) (values 60 |> List.filter ((<>) "k0:10")) "every other value once"
            Expect.equal handle.Stats.Restarts 0L "no restart"
            Expect.equal handle.Stats.DeadLettered 1L "one dead letter"

            use consumer =
                ConsumerBuilder<string, string>(cluster.ConsumerConfig "p-dead-reader").Build()

            consumer.Assign [ TopicPartitionOffset("p-dead-dlq", Partition 0, Offset.Beginning) ]
            let dead = consumer.Consume(TimeSpan.FromSeconds 20.)
            Expect.isNotNull dead "a dead letter"
            Expect.equal dead.Message.Value "k0:10" "the failing message"

        testCase
            "MaxConcurrentWrites 1: every write takes the gate, and a write waiting for its reservation holds no slot (no deadlock)"
        <| fun () ->
            use cluster = clusterWith "p-gate" 1 1 60
            let sink = PipelinedSink(fun _ _ -> false)
            let log = Log()

            let options = {
                options cluster log "p-gate" [ "p-gate" ] with
                    MaxConcurrentWrites = 1
            }

            runUntilSunk cluster log (seconds 30.) sink.Sunk 60 options (sink.ChainedPipe())
            |> ignore

            Expect.equal (List.ofSeq sink.Sunk) (values 60) "each value once, in reservation order"
            Expect.equal sink.Peak 1 "never more than the gate's one write at once"

        testCase "halt: a write failing for good halts the workflow, and nothing at or past it is committed"
        <| fun () ->
            use cluster = clusterWith "p-halt" 1 1 60
            let sink = PipelinedSink(fun v _ -> v = "k0:10")
            let log = Log()

            let options = {
                options cluster log "p-halt" [ "p-halt" ] with
                    SinkRetries = 0
                    OnFailure = Halt
            }

            let handle = Workflow.run options (sink.Pipe())

            let finished = handle.Completion.ContinueWith(fun (_: Task) -> ()).Wait(seconds 30.)

            Expect.isTrue finished $"the workflow halted.\nLog:\n{log.Tail}"
            Expect.isTrue handle.Completion.IsFaulted "Completion faulted"
            expectNotCommittedPast cluster "p-halt" "p-halt" 10L
            Expect.isFalse (Seq.contains "k0:10" sink.Sunk) "the failing value was never written"
    ]

let tests =
    testList "SinkLanes" [
        testSequenced policies

        test "writes of one lane run in request order, each after the one before it ended" {
            let started = List<string>()
            let l, ended, pending = lanes ()
            let first = TaskCompletionSource()
            l.Enqueue(request started "k" "a" first.Task)
            l.Enqueue(request started "k" "b" Task.CompletedTask)
            l.Enqueue(request started "k" "c" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a" ] "b waits while a runs"
            Expect.equal pending.Count 1 "a runs on"
            // The loop hands a's end (SinkDone) to the lanes, which settle it and continue the lane.
            first.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "b and c ran in order once a ended"
            Expect.equal (List.ofSeq ended) [ "a"; "b"; "c" ] "a settled by Ended, b and c inline"
        }

        test "writes of different lanes run side by side" {
            let started = List<string>()
            let l, _, pending = lanes ()
            l.Enqueue(request started "k1" "a" (TaskCompletionSource().Task))
            l.Enqueue(request started "k2" "b" (TaskCompletionSource().Task))
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "b does not wait for a"
            Expect.equal pending.Count 2 "both run on"
        }

        test "a write that fails at once stops its lane; the writes behind it wait" {
            let started = List<string>()
            let l, ended, pending = lanes ()
            let blocker = TaskCompletionSource()
            l.Enqueue(request started "k" "a" blocker.Task)
            l.Enqueue(request started "k" "b" (Task.FromException(exn "down")))
            l.Enqueue(request started "k" "c" Task.CompletedTask)
            blocker.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "c is not started after b failed"
            Expect.equal (List.ofSeq ended) [ "a"; "b" ] "b's failure was reported"
            l.Enqueue(request started "k" "d" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "nothing starts in the stopped lane"
        }

        test
            "a pipelined sink's lane starts up to InFlight writes at once, in request order, each reserved first" {
            let started = List<string>()
            let events = List<string>()
            let l, ended, pending = lanes ()
            let p = pipelined 2 events (fun _ -> Task.CompletedTask)
            let a, b = TaskCompletionSource(), TaskCompletionSource()
            l.Enqueue(requestWith p started "k" "a" a.Task)
            l.Enqueue(requestWith p started "k" "b" b.Task)
            l.Enqueue(requestWith p started "k" "c" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "a and b run together; c waits for room"
            Expect.equal (List.ofSeq events) [ "reserve a"; "reserve b" ] "reserved in request order"
            Expect.equal (l.Running "k") 2 "two writes in flight"
            // b ends before a: settled at once, and c takes its place.
            b.SetResult()
            l.Ended(pending[1], None)
            Expect.equal (List.ofSeq ended) [ "b"; "c" ] "b settled before a; c ran inline"
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "c started once b ended"

            Expect.equal
                (List.ofSeq events)
                [ "reserve a"; "reserve b"; "release b"; "reserve c"; "release c" ]
                "each released when it ended"

            a.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq ended) [ "b"; "c"; "a" ] "a settled last"
            Expect.equal (l.Running "k") 0 "the lane is idle"
        }

        test "a pipelined write starts only once its reservation is ready, and counts as in flight meanwhile" {
            let started = List<string>()
            let events = List<string>()
            let l, _, pending = lanes ()
            let gate = TaskCompletionSource()

            let p =
                pipelined 4 events (fun v -> if v = "b" then gate.Task else Task.CompletedTask)

            l.Enqueue(requestWith p started "k" "a" (TaskCompletionSource().Task))
            l.Enqueue(requestWith p started "k" "b" (TaskCompletionSource().Task))

            Expect.equal
                (List.ofSeq started)
                [ "a" ]
                "b waits for its reservation (an earlier batch of its keys)"

            Expect.equal pending.Count 2 "both are in flight"
            gate.SetResult()
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "b's write started once its reservation was ready"
        }

        test
            "a failed pipelined write stops its lane: the writes in flight finish, none starts, each is released" {
            let started = List<string>()
            let events = List<string>()
            let l, ended, pending = lanes ()
            let p = pipelined 3 events (fun _ -> Task.CompletedTask)
            let a, b, c = TaskCompletionSource(), TaskCompletionSource(), TaskCompletionSource()
            l.Enqueue(requestWith p started "k" "a" a.Task)
            l.Enqueue(requestWith p started "k" "b" b.Task)
            l.Enqueue(requestWith p started "k" "c" c.Task)
            l.Enqueue(requestWith p started "k" "d" Task.CompletedTask)
            a.SetException(exn "down")
            l.Ended(pending[0], Some(exn "down"))
            b.SetResult()
            l.Ended(pending[1], None)
            c.SetResult()
            l.Ended(pending[2], None)
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "d never started"
            Expect.equal (List.ofSeq ended) [ "a"; "b"; "c" ] "a's failure reported; b and c finished"

            Expect.equal
                (List.ofSeq events)
                [ "reserve a"; "reserve b"; "reserve c"; "release a"; "release b"; "release c" ]
                "the failed write was released too (the runtime will not write it again)"
        }

        test "writes of an ordinary sink are never reserved or released" {
            let started = List<string>()
            let events = List<string>()
            let l, _, _ = lanes ()

            let p = {
                pipelined 2 events (fun _ -> Task.CompletedTask) with
                    InFlight = 1
            }

            l.Enqueue(requestWith p started "k" "a" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a" ] "a ran"
            Expect.isEmpty events "one write at a time needs no reservation"
        }
    ]
