// Tests for src/KFlow.Kafka/Retransmit.fs: a topic copied to another on the embedded cluster,
// re-keyed, every message at least once, the source's offsets committed to its end. Sequenced.
module KFlow.Kafka.Tests.RetransmitTests

open System
open System.Text
open Confluent.Kafka
open Expecto
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Testing

let private copyRekeyed =
    testCase "copies every message of a topic to another, re-keyed, and commits the source to its end"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("source", 4)
        cluster.CreateTopic("target", 2)
        produceKeyed cluster "source" 20 2_000
        let log = Log()

        let o = {
            Retransmit.options (options cluster log "retransmit" [ "source" ]) "target" with
                Producer = cluster.ProducerConfig()
                Rekey = fun key _ -> key.ToUpperInvariant()
        }

        let handle = Retransmit.run o

        let stored () =
            endOffsets cluster "target" 2 |> List.sumBy snd

        waitUntil log (TimeSpan.FromSeconds 30.) "2,000 copies are in the target" (fun () ->
            stored () >= 2_000L)

        if not (handle.StopAsync().Wait(TimeSpan.FromSeconds 30.)) then
            failtestf "StopAsync did not finish within 30 s.\nLog:\n%s" log.Tail

        use consumer =
            ConsumerBuilder<string, string>(cluster.ConsumerConfig "check").Build()

        consumer.Subscribe "target"
        let copies = Collections.Generic.HashSet<string * string>()
        let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 30.

        while int64 copies.Count < 2_000L && DateTime.UtcNow < deadline do
            match consumer.Consume(TimeSpan.FromMilliseconds 100.) with
            | null -> ()
            | r -> copies.Add((r.Message.Key, r.Message.Value)) |> ignore

        consumer.Close()
        Expect.equal copies.Count 2_000 "every message copied (at least once)"

        for key, value in copies do
            Expect.equal key (value.Substring(0, value.IndexOf ':').ToUpperInvariant()) "re-keyed"

        Expect.equal
            (committed cluster "retransmit" "source" 4)
            (endOffsets cluster "source" 4)
            $"the source is committed to its end.\nLog:\n{log.Tail}"

let tests = testSequenced <| testList "Retransmit" [ copyRekeyed ]
