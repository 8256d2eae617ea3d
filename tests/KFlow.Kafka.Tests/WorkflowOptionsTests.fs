// Tests for src/KFlow.Kafka/WorkflowOptions.fs: defaults, validation messages naming the setting,
// and the consumer configuration the runtime owns.
module KFlow.Kafka.Tests.WorkflowOptionsTests

open System
open Confluent.Kafka
open Expecto
open KFlow.Kafka

let private valid =
    WorkflowOptions.create "orders" "localhost:9092" "orders-group" [ "orders" ]

let private refused (options: WorkflowOptions) (setting: string) =
    Expect.throwsC (fun () -> WorkflowOptions.validate options |> ignore) (fun e ->
        Expect.isTrue (e :? ArgumentException) "an ArgumentException"
        Expect.stringContains e.Message setting $"the message names {setting}")

let tests =
    testList "WorkflowOptions" [
        test "the defaults are valid and state the documented values" {
            let o = WorkflowOptions.validate valid
            Expect.equal o.CommitInterval (TimeSpan.FromSeconds 5.) "commit every 5 s"
            Expect.equal o.AutoOffsetReset Earliest "earliest"
            Expect.equal o.TickInterval (TimeSpan.FromSeconds 1.) "tick every second"
            Expect.equal o.DrainTimeout (TimeSpan.FromSeconds 10.) "drain 10 s"
            Expect.equal o.Backpressure.MaxInFlightMessages 50_000 "50k messages"
            Expect.equal o.Backpressure.MaxInFlightBytes (64L * 1024L * 1024L) "64 MiB"
            Expect.equal o.Backpressure.ResumeAt 0.5 "resume at half"
            Expect.equal o.Backpressure.MaxOpenOffsetsPerPartition 20_000 "20k open offsets"
            Expect.equal o.Backpressure.MaxQueuedMessages 8_192 "8,192 queued messages"
            Expect.equal o.Backpressure.FlushWhenStalled (TimeSpan.FromSeconds 2.) "flush after a 2 s stall"

            Expect.equal
                (ErrorPolicy.describe o.OnFailure)
                (ErrorPolicy.describe ErrorPolicy.defaults)
                "restart and replay"

            Expect.equal o.SinkRetries 3 "3 sink retries"
            Expect.equal o.SinkRetryBackoff.First (TimeSpan.FromMilliseconds 100.) "from 100 ms"
            Expect.equal o.SinkRetryBackoff.Max (TimeSpan.FromSeconds 5.) "to 5 s"
            Expect.equal o.StartTimeout (TimeSpan.FromSeconds 30.) "start timeout 30 s"
            Expect.equal o.MaxConcurrentCalls 1024 "1,024 async calls at once"
            Expect.equal o.MaxConcurrentWrites Int32.MaxValue "no cap on sink writes"
        }

        test "every bad setting is refused with a message naming it" {
            refused { valid with Name = " " } "Name"
            refused { valid with BootstrapServers = "" } "BootstrapServers"
            refused { valid with Topics = [] } "Topics"
            refused { valid with Topics = [ "" ] } "Topics"
            refused { valid with GroupId = "" } "GroupId"

            refused
                {
                    valid with
                        CommitInterval = TimeSpan.Zero
                }
                "CommitInterval"

            refused
                {
                    valid with
                        TickInterval = TimeSpan.FromSeconds -1.
                }
                "TickInterval"

            refused
                {
                    valid with
                        DrainTimeout = TimeSpan.Zero
                }
                "DrainTimeout"

            refused { valid with MaxConcurrentCalls = 0 } "MaxConcurrentCalls"
            refused { valid with MaxConcurrentWrites = 0 } "MaxConcurrentWrites"

            let bp = valid.Backpressure

            refused
                {
                    valid with
                        Backpressure = { bp with MaxInFlightMessages = 0 }
                }
                "MaxInFlightMessages"

            refused
                {
                    valid with
                        Backpressure = { bp with MaxInFlightBytes = 0L }
                }
                "MaxInFlightBytes"

            refused
                {
                    valid with
                        Backpressure = {
                            bp with
                                MaxOpenOffsetsPerPartition = 0
                        }
                }
                "MaxOpenOffsetsPerPartition"

            refused
                {
                    valid with
                        Backpressure = { bp with MaxQueuedMessages = 0 }
                }
                "MaxQueuedMessages"

            refused
                {
                    valid with
                        Backpressure = { bp with ResumeAt = 1.0 }
                }
                "ResumeAt"

            refused
                {
                    valid with
                        Backpressure = {
                            bp with
                                FlushWhenStalled = TimeSpan.Zero
                        }
                }
                "FlushWhenStalled"

            refused
                {
                    valid with
                        OnFailure =
                            RestartAndReplay {
                                Backoff.defaults with
                                    First = TimeSpan.Zero
                                    Max = TimeSpan.Zero
                            }
                }
                "OnFailure.First"
        }

        test "properties the runtime owns are refused with the option to use instead" {
            refused
                {
                    valid with
                        Properties = [ "enable.auto.commit", "false" ]
                }
                "enable.auto.commit"

            refused
                {
                    valid with
                        Properties = [ "auto.offset.reset", "latest" ]
                }
                "WorkflowOptions.AutoOffsetReset"

            refused
                {
                    valid with
                        Properties = [ "group.id", "x" ]
                }
                "WorkflowOptions.GroupId"
        }

        test "the consumer stores offsets explicitly and commits them on the interval" {
            let c =
                WorkflowOptions.consumerConfig {
                    valid with
                        Properties = [ "partition.assignment.strategy", "cooperative-sticky" ]
                        CommitInterval = TimeSpan.FromSeconds 2.
                }

            Expect.equal c.EnableAutoOffsetStore (Nullable false) "offsets stored by the runtime"
            Expect.equal c.EnableAutoCommit (Nullable true) "librdkafka commits the stored offsets"
            Expect.equal c.AutoCommitIntervalMs (Nullable 2000) "on the interval"
            Expect.equal c.AutoOffsetReset (Nullable AutoOffsetReset.Earliest) "earliest"
            Expect.equal c.GroupId "orders-group" "group"
            Expect.equal (c.Get "partition.assignment.strategy") "cooperative-sticky" "passed through"
        }

        test "the consumer fetches again 10 ms after a full local queue unless a property says otherwise" {
            let byDefault = WorkflowOptions.consumerConfig valid

            Expect.equal
                (byDefault.Get "fetch.queue.backoff.ms")
                "10"
                "KFlow's default (librdkafka's is 1000)"

            let overridden =
                WorkflowOptions.consumerConfig {
                    valid with
                        Properties = [ "fetch.queue.backoff.ms", "1000" ]
                }

            Expect.equal (overridden.Get "fetch.queue.backoff.ms") "1000" "the user's property wins"
        }

        test "the consumer fills message headers only when a policy dead-letters" {
            let fields (o: WorkflowOptions) =
                (WorkflowOptions.consumerConfig o).Get WorkflowOptions.ResultFields

            Expect.equal (fields valid) "topic,timestamp" "no dead-letter policy: no headers"

            let deadLetter = ErrorPolicy.DeadLetter "dead"

            Expect.equal
                (fields { valid with OnFailure = deadLetter })
                "topic,timestamp,headers"
                "the default policy"

            Expect.equal
                (fields {
                    valid with
                        OnStageFailure = Map [ "sink", deadLetter ]
                })
                "topic,timestamp,headers"
                "one stage's policy"

            Expect.equal
                (fields {
                    valid with
                        Properties = [ WorkflowOptions.ResultFields, "all" ]
                })
                "all"
                "the user's property wins"
        }

        test "a result-fields property without what the runtime reads is refused, naming what is missing" {
            refused
                {
                    valid with
                        Properties = [ WorkflowOptions.ResultFields, "none" ]
                }
                "without topic, timestamp"

            refused
                {
                    valid with
                        OnFailure = ErrorPolicy.DeadLetter "dead"
                        Properties = [ WorkflowOptions.ResultFields, "topic,timestamp" ]
                }
                "without headers"

            WorkflowOptions.validate {
                valid with
                    Properties = [ WorkflowOptions.ResultFields, "timestamp, topic" ]
            }
            |> ignore
        }
    ]
