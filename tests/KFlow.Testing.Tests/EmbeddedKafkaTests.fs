// Tests for src/KFlow.Testing/EmbeddedKafka.fs and the dev cluster program: real Confluent.Kafka
// clients against librdkafka's mock cluster, including fault injection. Sequenced: they share CPU.
module KFlow.Testing.Tests.EmbeddedKafkaTests

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Threading
open Confluent.Kafka
open Expecto
open KFlow.Tests
open KFlow.Testing

let private endpoints (bootstrap: string) =
    bootstrap.Split ','
    |> Array.map (fun hp ->
        let i = hp.LastIndexOf ':'
        hp.Substring(0, i), int (hp.Substring(i + 1)))

let private accepts (host: string, port: int) =
    try
        use c = new TcpClient()
        c.Connect(host, port)
        true
    with :? SocketException ->
        false

/// Produces `count` messages key "i" / value "value-i" and waits for every delivery.
let private produce (cluster: EmbeddedKafkaCluster) (topic: string) (first: int) (count: int) =
    use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let mutable failed = 0

    for i in first .. first + count - 1 do
        producer.Produce(
            topic,
            Message<_, _>(Key = string i, Value = $"value-{i}"),
            fun report ->
                if report.Error.IsError then
                    Interlocked.Increment &failed |> ignore
        )

    producer.Flush(TimeSpan.FromSeconds 60.) |> ignore
    Expect.equal failed 0 "every message is delivered"

/// Consumes until `count` messages arrived (or 60 s passed); returns them in arrival order.
let private consumeN (consumer: IConsumer<string, string>) (count: int) =
    let got = ResizeArray()
    let deadline = DateTime.UtcNow.AddSeconds 60.

    while got.Count < count && DateTime.UtcNow < deadline do
        match consumer.Consume(TimeSpan.FromMilliseconds 200.) with
        | null -> ()
        | r -> got.Add r

    Expect.equal got.Count count $"{count} messages arrive within 60 s"
    List.ofSeq got

/// The error code of the ProduceException that a failed ProduceAsync(...).Wait() wraps.
let private produceError (e: exn) =
    match e.InnerException with
    | :? ProduceException<string, string> as pe -> pe.Error.Code
    | other -> failtestf "expected a ProduceException, got %A" other

let private manualCommitConsumer (cluster: EmbeddedKafkaCluster) (group: string) =
    let config = cluster.ConsumerConfig group
    config.EnableAutoCommit <- false
    ConsumerBuilder<string, string>(config).Build()

let private clusterTests =
    testSequenced
    <| testList "cluster" [
        test "a started cluster accepts connections on every broker and disposing it frees the ports" {
            let cluster = EmbeddedKafka.start 3
            let brokers = endpoints cluster.BootstrapServers
            Expect.equal brokers.Length 3 "one bootstrap address per broker"
            Expect.all brokers (fun (host, _) -> host = "127.0.0.1") "loopback addresses"
            Expect.all brokers accepts "every broker accepts a connection"
            cluster.Dispose()
            Expect.all brokers (accepts >> not) "no broker accepts a connection after Dispose"
            cluster.Dispose() // idempotent
            Expect.throwsT<ObjectDisposedException> (fun () -> cluster.CreateTopic("t", 1)) "stopped cluster"
        }

        testTask "a cluster can be disposed asynchronously" {
            let cluster = EmbeddedKafka.start 1
            let brokers = endpoints cluster.BootstrapServers
            do! (cluster :> IAsyncDisposable).DisposeAsync()
            Expect.all brokers (accepts >> not) "no broker accepts a connection after DisposeAsync"
        }

        test "bad arguments are refused with a sentence saying what to do" {
            Expect.throwsT<ArgumentOutOfRangeException>
                (fun () -> EmbeddedKafka.start 0 |> ignore)
                "0 brokers"

            use cluster = EmbeddedKafka.start 2

            Expect.throwsC (fun () -> cluster.TakeBrokerDown 3) (fun e ->
                Expect.stringContains e.Message "Broker ids run from 1 to 2" "names the valid ids")

            Expect.throwsC (fun () -> cluster.CreateTopic("t", 1, 3)) (fun e ->
                Expect.stringContains e.Message "replication factor" "names the setting")

            Expect.throwsT<ArgumentOutOfRangeException> (fun () -> cluster.CreateTopic("t", 0)) "0 partitions"
            Expect.throwsT<ArgumentException> (fun () -> cluster.CreateTopic("", 1)) "empty name"
        }

        test "Confluent.Kafka and the cluster share one loaded librdkafka" {
            use _cluster = EmbeddedKafka.start 1
            let path = EmbeddedKafka.loadedLibraryPath ()

            if OperatingSystem.IsLinux() then
                let mapped =
                    File.ReadAllLines "/proc/self/maps"
                    |> Array.filter (fun l -> l.Contains "librdkafka")
                    |> Array.map (fun l -> l.Substring(l.IndexOf '/'))
                    |> Array.distinct

                Expect.equal mapped [| string path |] "exactly one librdkafka file is mapped"

            Expect.isGreaterThan Library.Version 0 "Confluent.Kafka works alongside"
        }

        test "a created topic has the requested partitions and replicas in the cluster metadata" {
            use cluster = EmbeddedKafka.start 3
            cluster.CreateTopic("orders", 6, 3)
            use admin = AdminClientBuilder(cluster.AdminConfig()).Build()
            let metadata = admin.GetMetadata("orders", TimeSpan.FromSeconds 10.)
            let topic = metadata.Topics |> Seq.exactlyOne
            Expect.equal topic.Error.Code ErrorCode.NoError "the topic exists"
            Expect.equal topic.Partitions.Count 6 "6 partitions"
            Expect.all topic.Partitions (fun p -> p.Replicas.Length = 3) "3 replicas each"
            Expect.equal metadata.Brokers.Count 3 "3 brokers"
        }

        test "100k messages produced are all consumed once with their content intact" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("bulk", 4)
            let n = 100_000
            produce cluster "bulk" 0 n

            use consumer =
                ConsumerBuilder<string, string>(cluster.ConsumerConfig "bulk-reader").Build()

            consumer.Subscribe "bulk"
            let got = consumeN consumer n
            consumer.Close()
            Expect.all got (fun r -> r.Message.Value = $"value-{r.Message.Key}") "each value matches its key"

            let keys = got |> List.map (fun r -> int r.Message.Key) |> List.sort
            Expect.sequenceEqual keys [ 0 .. n - 1 ] "every key exactly once"

            for _, records in got |> List.groupBy (fun r -> r.Partition.Value) do
                let offsets = records |> List.map (fun r -> r.Offset.Value)
                Expect.sequenceEqual offsets [ 0L .. int64 offsets.Length - 1L ] "offsets in order, no gap"
        }

        test "a second consumer in the group resumes exactly at the offsets the first committed" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("resume", 2)
            produce cluster "resume" 0 1000
            let first = manualCommitConsumer cluster "resumers"
            first.Subscribe "resume"
            let read1 = consumeN first 600

            first.Commit(
                read1
                |> List.map (fun r -> TopicPartitionOffset(r.TopicPartition, r.Offset + 1L))
            )

            let committed =
                first.Committed(TimeSpan.FromSeconds 10.)
                |> Seq.map (fun tpo -> tpo.Partition.Value, tpo.Offset.Value)
                |> Map.ofSeq

            first.Close() // leaves the group
            first.Dispose()

            use second = manualCommitConsumer cluster "resumers"
            second.Subscribe "resume"
            let read2 = consumeN second 400
            second.Close()

            for partition, records in read2 |> List.groupBy (fun r -> r.Partition.Value) do
                let resumedAt = (List.head records).Offset.Value
                let expected = committed |> Map.tryFind partition |> Option.defaultValue 0L
                Expect.equal resumedAt expected $"partition {partition} resumes at its committed offset"

            let keys = read1 @ read2 |> List.map (fun r -> int r.Message.Key) |> List.sort
            Expect.sequenceEqual keys [ 0..999 ] "no message lost, none read twice"
        }

        test "a producer recovers when its broker goes down and comes back up" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("flaky", 1)
            produce cluster "flaky" 0 1
            cluster.TakeBrokerDown 1

            let impatient = cluster.ProducerConfig()
            impatient.MessageTimeoutMs <- 1000

            using (ProducerBuilder<string, string>(impatient).Build()) (fun p ->
                let attempt = p.ProduceAsync("flaky", Message<_, _>(Key = "x", Value = "lost"))

                Expect.throwsC (fun () -> attempt.Wait()) (fun e ->
                    Expect.equal (produceError e) ErrorCode.Local_MsgTimedOut "no delivery while down"))

            use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()

            let pending =
                producer.ProduceAsync("flaky", Message<_, _>(Key = "1", Value = "value-1"))

            cluster.BringBrokerUp 1
            let result = pending.Result
            Expect.equal result.Status PersistenceStatus.Persisted "delivered once the broker is up"

            use consumer =
                ConsumerBuilder<string, string>(cluster.ConsumerConfig "flaky-reader").Build()

            consumer.Subscribe "flaky"
            let got = consumeN consumer 2
            consumer.Close()

            Expect.sequenceEqual
                (got |> List.map (fun r -> r.Message.Key))
                [ "0"; "1" ]
                "both messages, in order"
        }

        test "an injected Produce error reaches a producer that does not retry" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("errors", 1)
            produce cluster "errors" 0 1 // connections and metadata are ready before the injection
            let config = cluster.ProducerConfig()
            config.MessageSendMaxRetries <- 0
            use producer = ProducerBuilder<string, string>(config).Build()
            producer.ProduceAsync("errors", Message<_, _>(Key = "warm", Value = "up")).Wait()
            cluster.PushRequestErrors(KafkaApiKey.Produce, ErrorCode.NotEnoughReplicas)

            Expect.throwsC
                (fun () -> producer.ProduceAsync("errors", Message<_, _>(Key = "x", Value = "y")).Wait())
                (fun e -> Expect.equal (produceError e) ErrorCode.NotEnoughReplicas "the injected error")

            let after =
                producer.ProduceAsync("errors", Message<_, _>(Key = "z", Value = "ok")).Result

            Expect.equal after.Status PersistenceStatus.Persisted "the next request goes through"
        }

        test "injected retriable Produce errors are retried and the message lands once" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("retried", 1)
            use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()

            cluster.PushRequestErrors(
                KafkaApiKey.Produce,
                ErrorCode.NotEnoughReplicas,
                ErrorCode.RequestTimedOut,
                ErrorCode.LeaderNotAvailable
            )

            let result =
                producer.ProduceAsync("retried", Message<_, _>(Key = "0", Value = "value-0")).Result

            Expect.equal result.Status PersistenceStatus.Persisted "delivered after the retries"

            use consumer =
                ConsumerBuilder<string, string>(cluster.ConsumerConfig "retried-reader").Build()

            consumer.Subscribe "retried"
            consumeN consumer 1 |> ignore
            Expect.isNull (consumer.Consume(TimeSpan.FromSeconds 1.)) "no duplicate"
            consumer.Close()
        }

        test "a round-trip time on a broker makes a request with a shorter timeout time out" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("slow", 1)
            cluster.SetRoundTripTime(1, TimeSpan.FromSeconds 3.)

            using (AdminClientBuilder(cluster.AdminConfig()).Build()) (fun admin ->
                Expect.throwsT<KafkaException>
                    (fun () -> admin.GetMetadata("slow", TimeSpan.FromMilliseconds 500.) |> ignore)
                    "metadata cannot arrive before the round-trip time")

            cluster.SetRoundTripTime(1, TimeSpan.Zero)
            use admin = AdminClientBuilder(cluster.AdminConfig()).Build()
            let metadata = admin.GetMetadata("slow", TimeSpan.FromSeconds 10.)
            Expect.equal (Seq.exactlyOne metadata.Topics).Partitions.Count 1 "answers once the delay is gone"
        }
    ]

// ---------------------------------------------------------------------------------------------
// The dev cluster program, run as a separate process

let private devClusterDll () =
    BuiltProgram.dll "src/KFlow.DevCluster" "KFlow.DevCluster"

let private startDevCluster (args: string list) =
    BuiltProgram.start (devClusterDll ()) args

let private signal (name: string) (p: Process) =
    use kill = Process.Start("kill", [ "-" + name; string p.Id ])
    kill.WaitForExit()

let private devClusterTests =
    testSequenced
    <| testList "dev cluster" [
        test "serves a cluster that a separate client uses, then exits 0 on SIGTERM" {
            use p = startDevCluster [ "--brokers"; "2"; "--topic"; "dev:3:2" ]
            let stderr = p.StandardError.ReadToEndAsync()

            try
                let rec bootstrapLine () =
                    match p.StandardOutput.ReadLine() with
                    | null -> None
                    | l when l.StartsWith "BOOTSTRAP=" -> Some(l.Substring "BOOTSTRAP=".Length)
                    | _ -> bootstrapLine ()

                let bootstrap = bootstrapLine ()

                let bootstrap =
                    match bootstrap with
                    | Some b -> b
                    | None -> failwith $"no BOOTSTRAP line; stderr: {stderr.Result}"

                Expect.equal (endpoints bootstrap).Length 2 "two brokers"
                // Clients live in this scope, so they are gone before the cluster stops.
                let useCluster () =
                    use admin = AdminClientBuilder(FastClientSettings.adminConfig bootstrap).Build()

                    let topic =
                        admin.GetMetadata("dev", TimeSpan.FromSeconds 10.).Topics |> Seq.exactlyOne

                    Expect.equal topic.Partitions.Count 3 "the --topic was created"

                    use producer =
                        ProducerBuilder<string, string>(FastClientSettings.producerConfig bootstrap).Build()

                    for i in 0..9 do
                        producer.Produce("dev", Message<_, _>(Key = string i, Value = $"value-{i}"))

                    Expect.equal (producer.Flush(TimeSpan.FromSeconds 30.)) 0 "all delivered"

                    use consumer =
                        ConsumerBuilder<string, string>(
                            FastClientSettings.consumerConfig "dev-reader" bootstrap
                        )
                            .Build()

                    consumer.Subscribe "dev"

                    let keys =
                        consumeN consumer 10 |> List.map (fun r -> int r.Message.Key) |> List.sort

                    consumer.Close()
                    Expect.sequenceEqual keys [ 0..9 ] "every message consumed"

                useCluster ()
                signal "TERM" p
                Expect.isTrue (p.WaitForExit 15_000) "exits after SIGTERM"
                Expect.equal p.ExitCode 0 "clean exit"
                Expect.stringContains stderr.Result "stopping" "stopped the cluster itself"
            finally
                if not p.HasExited then
                    p.Kill()
        }

        test "exits 2 with the usage on a bad argument" {
            use p = startDevCluster [ "--brokers"; "none" ]
            let stderr = p.StandardError.ReadToEndAsync()
            p.StandardOutput.ReadToEnd() |> ignore
            Expect.isTrue (p.WaitForExit 15_000) "exits"
            Expect.equal p.ExitCode 2 "usage error"
            Expect.stringContains stderr.Result "--brokers must be a whole number" "says what is wrong"
            Expect.stringContains stderr.Result "usage:" "prints the usage"
        }
    ]

let tests = testList "EmbeddedKafka" [ clusterTests; devClusterTests ]
