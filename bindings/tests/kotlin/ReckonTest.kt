// The generated Kotlin bindings and the Android facade, run on the JVM
// against the host-built library and the real default model.
// Usage: java ... ReckonTestKt MODEL_PATH   (prints "N passed, N failed")

import dev.reckon.Reckon
import dev.reckon.SolveUpdate
import dev.reckon.ffi.BatchListener
import dev.reckon.ffi.CancelToken
import dev.reckon.ffi.Engine
import dev.reckon.ffi.EngineOptions
import dev.reckon.ffi.FinishReason
import dev.reckon.ffi.InjectReason
import dev.reckon.ffi.ReckonException
import dev.reckon.ffi.Segment
import dev.reckon.ffi.SolveEvent
import dev.reckon.ffi.SolveListener
import dev.reckon.ffi.SolveOptions
import dev.reckon.ffi.ThinkFormat
import dev.reckon.ffi.defaultSolveOptions
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import java.io.File
import java.util.concurrent.CountDownLatch
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger
import kotlin.concurrent.thread

const val JANET = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for \$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?"

var passed = 0
var failed = 0

fun check(cond: Boolean, msg: () -> String) {
    if (!cond) throw AssertionError(msg())
}

fun test(name: String, body: () -> Unit) {
    try {
        body()
        passed++
        println("ok     $name")
    } catch (t: Throwable) {
        failed++
        println("FAILED $name: $t")
    }
}

class Collect : SolveListener {
    val events = mutableListOf<SolveEvent>()
    override fun onEvent(event: SolveEvent): Boolean {
        events.add(event)
        return true
    }
    fun text(segment: Segment): String = events.joinToString("") {
        when (it) {
            is SolveEvent.Thinking -> if (segment == Segment.THINKING) it.text else ""
            is SolveEvent.Answer -> if (segment == Segment.ANSWER) it.text else ""
            is SolveEvent.Injected -> if (it.segment == segment) it.text else ""
            else -> ""
        }
    }
}

fun main(args: Array<String>) {
    val modelPath = args.getOrNull(0) ?: error("usage: ReckonTestKt MODEL_PATH")
    val engine = Engine(modelPath, EngineOptions())
    val short = SolveOptions(maxThinkingTokens = 24u, maxAnswerTokens = 8u, threads = 2u)

    test("model info") {
        val info = engine.info()
        check(info.architecture == "qwen2") { "architecture ${info.architecture}" }
        check(info.quantization == "Q4_K_M") { info.quantization }
        check(info.format == ThinkFormat.PLAIN) { "${info.format}" }
    }

    test("events arrive in order and concatenate to the final text") {
        val c = Collect()
        val r = engine.solve(JANET, short, c, null)
        check(c.events.last() is SolveEvent.Done) { "last event ${c.events.last()}" }
        check(c.events.count { it is SolveEvent.Done } == 1) { "one Done" }
        check(c.text(Segment.THINKING) == r.thinking) { "thinking differs" }
        check(c.text(Segment.ANSWER) == r.answer) { "answer differs" }
        check(r.thinkingTokens + r.injectedTokens <= 24u) { "cap exceeded: ${r.thinkingTokens}" }
        check(r.forcedEnd) { "forced" }
        val firstAnswer = c.events.indexOfFirst { it is SolveEvent.Injected && it.reason == InjectReason.TOKEN_CAP }
        val lastThinking = c.events.indexOfLast { it is SolveEvent.Thinking }
        check(firstAnswer > lastThinking) { "thinking after the forced end" }
    }

    test("greedy solves are deterministic") {
        val a = engine.solve(JANET, short, Collect(), null)
        val b = engine.solve(JANET, short, Collect(), null)
        check(a.thinking == b.thinking && a.answer == b.answer) { "differ" }
    }

    test("cancel from another thread stops within a step") {
        val token = CancelToken()
        val fifth = CountDownLatch(1)
        val afterCancel = AtomicInteger(0)
        val canceller = thread {
            fifth.await()
            token.cancel()
        }
        var n = 0
        val r = engine.solve(JANET, SolveOptions(maxThinkingTokens = 1024u, threads = 2u), object : SolveListener {
            override fun onEvent(event: SolveEvent): Boolean {
                if (token.isCancelled() && event !is SolveEvent.Done) afterCancel.incrementAndGet()
                if (++n == 5) {
                    fifth.countDown()
                    while (!token.isCancelled()) Thread.onSpinWait()
                }
                return true
            }
        }, token)
        canceller.join()
        check(r.finish == FinishReason.CANCELLED) { "finish ${r.finish}" }
        check(afterCancel.get() == 0) { "${afterCancel.get()} events after cancel" }
        check(r.thinkingTokens < 10u) { "${r.thinkingTokens} tokens" }
    }

    test("a bad model path throws the mapped exception") {
        try {
            Engine("/nonexistent/model.gguf", EngineOptions())
            throw AssertionError("no exception")
        } catch (e: ReckonException.ModelNotFound) {
            check(e.reason.contains("/nonexistent/model.gguf")) { e.reason }
        }
        val junk = File.createTempFile("junk", ".gguf")
        junk.writeText("not a model")
        try {
            Engine(junk.path, EngineOptions())
            throw AssertionError("no exception")
        } catch (e: ReckonException.InvalidModel) {
            check(e.reason.contains("not a GGUF file")) { e.reason }
        } finally {
            junk.delete()
        }
    }

    test("an adapter that is not a LoRA adapter throws InvalidModel") {
        // The model file is a sound GGUF, but a model, not an adapter.
        try {
            Engine(modelPath, EngineOptions(adapterPath = modelPath))
            throw AssertionError("no exception")
        } catch (e: ReckonException.InvalidModel) {
            check(e.reason.contains("not a LoRA adapter")) { e.reason }
        }
    }

    test("bad input throws InvalidInput and PromptTooLong") {
        try {
            engine.solve(JANET, SolveOptions(minThinkingTokens = 10u, maxThinkingTokens = 5u), Collect(), null)
            throw AssertionError("no exception")
        } catch (e: ReckonException.InvalidInput) {}
        try {
            engine.solve("  ", short, Collect(), null)
            throw AssertionError("no exception")
        } catch (e: ReckonException.InvalidInput) {}
        val small = Engine(modelPath, EngineOptions(maxContext = 128u))
        try {
            small.solve(JANET.repeat(4), short, Collect(), null)
            throw AssertionError("no exception")
        } catch (e: ReckonException.PromptTooLong) {
        } finally {
            small.close()
        }
    }

    test("an exception thrown by the listener surfaces cleanly") {
        var calls = 0
        try {
            engine.solve(JANET, short, object : SolveListener {
                override fun onEvent(event: SolveEvent): Boolean {
                    if (++calls == 3) throw IllegalStateException("the UI is gone")
                    return true
                }
            }, null)
            throw AssertionError("no exception")
        } catch (e: ReckonException.Listener) {
            check(e.reason.contains("the UI is gone")) { e.reason }
        }
        check(calls <= 4) { "the solve went on after the throw: $calls calls" }
        // The engine is still usable.
        check(engine.solve(JANET, short, Collect(), null).finish != FinishReason.STOPPED) { "unusable" }
    }

    test("facade: the flow streams events then the result") {
        val reckon = Reckon.load(modelPath)
        val updates = runBlocking { reckon.solveFlow(JANET, short).toList() }
        val finished = updates.last() as SolveUpdate.Finished
        val thinking = updates.filterIsInstance<SolveUpdate.Event>().joinToString("") {
            when (val e = it.event) {
                is SolveEvent.Thinking -> e.text
                is SolveEvent.Injected -> if (e.segment == Segment.THINKING) e.text else ""
                else -> ""
            }
        }
        check(thinking == finished.result.thinking) { "flow text differs" }
        reckon.close()
    }

    test("facade: coroutine cancellation stops the solve") {
        val reckon = Reckon.load(modelPath)
        val seen = AtomicInteger(0)
        val afterCancel = AtomicInteger(0)
        val cancelled = AtomicBoolean(false)
        runBlocking {
            val job = launch {
                reckon.solve(JANET, SolveOptions(maxThinkingTokens = 1024u, threads = 2u)) {
                    if (cancelled.get()) afterCancel.incrementAndGet()
                    seen.incrementAndGet()
                }
            }
            while (seen.get() < 3) delay(5)
            cancelled.set(true)
            // join returns only once the blocking solve has returned.
            job.cancelAndJoin()
        }
        // The flag is set just before cancelling: at most one step's events
        // (text and an injection) can slip in between.
        check(afterCancel.get() <= 2) { "${afterCancel.get()} events after cancel" }
        reckon.close()
    }

    test("SolveOptions() defaults are the runtime's") {
        check(SolveOptions() == defaultSolveOptions()) { "${SolveOptions()} != ${defaultSolveOptions()}" }
        check(EngineOptions().gpuLayers == null) { "gpuLayers default ${EngineOptions().gpuLayers}" }
    }

    test("facade: a collector that stops early stops the solve") {
        val reckon = Reckon.load(modelPath)
        // The floor keeps the model thinking for at least 1000 tokens, so
        // a solve left running takes over 5 s (1000 tokens would need more
        // than 200 tok/s; this model does under 60 on 2 cores): returning
        // sooner is the stop, observed.
        val options = SolveOptions(minThinkingTokens = 1000u, maxThinkingTokens = 1024u, threads = 2u)
        val start = System.nanoTime()
        // Collection of a flowOn flow waits for its producer: this returns
        // only after the blocking solve has returned.
        val first = runBlocking { reckon.solveFlow(JANET, options).take(3).toList() }
        val seconds = (System.nanoTime() - start) / 1e9
        check(first.size == 3) { "${first.size}" }
        check(first.all { it is SolveUpdate.Event }) { "the solve finished instead of stopping: $first" }
        check(seconds < 5.0) { "took %.1f s: the solve was not stopped".format(seconds) }
        reckon.close()
    }

    test("solveBatch grades a worksheet, one bad question reported in its item") {
        val texts = java.util.concurrent.ConcurrentHashMap<UInt, StringBuilder>()
        val listener = object : BatchListener {
            override fun onEvent(index: UInt, event: SolveEvent): Boolean {
                val t = when (event) {
                    is SolveEvent.Thinking -> event.text
                    is SolveEvent.Answer -> event.text
                    is SolveEvent.Injected -> event.text
                    else -> ""
                }
                texts.getOrPut(index) { StringBuilder() }.append(t)
                return true
            }
        }
        val items = engine.solveBatch(listOf("What is 2 + 3?", "", JANET), short, 2u, listener, null)
        check(items.map { it.index } == listOf(0u, 1u, 2u)) { "$items" }
        check(items[1].result == null && items[1].error!!.contains("empty")) { "${items[1]}" }
        for (i in listOf(0, 2)) {
            val r = items[i].result ?: error("item $i: ${items[i].error}")
            check(r.thinkingTokens + r.injectedTokens <= 24u) { "cap exceeded" }
            check(texts[i.toUInt()].toString() == r.thinking + r.answer) { "events of $i differ from its result" }
        }
        val single = engine.solve(JANET, short, Collect(), null)
        check(items[2].result!!.extractedAnswer == single.extractedAnswer) { "batched ${items[2].result} vs single $single" }
    }

    test("closing the token cancels the solve it was given to") {
        val token = CancelToken()
        val third = CountDownLatch(1)
        val closer = thread {
            third.await()
            token.close()
        }
        var n = 0
        // A floor of 1000 tokens: the solve cannot end by itself first.
        val r = engine.solve(JANET, SolveOptions(minThinkingTokens = 1000u, maxThinkingTokens = 1024u, threads = 2u), object : SolveListener {
            override fun onEvent(event: SolveEvent): Boolean {
                if (++n == 3) third.countDown()
                return true
            }
        }, token)
        closer.join()
        check(r.finish == FinishReason.CANCELLED) { "finish ${r.finish}" }
        check(r.thinkingTokens < 200u) { "${r.thinkingTokens} tokens: the close did not stop it" }
    }

    test("Done carries the result; thinking events count toward the cap") {
        val c = Collect()
        val r = engine.solve(JANET, short, c, null)
        val done = c.events.last() as SolveEvent.Done
        check(done.result == r && done.finish == r.finish) { "$done vs $r" }
        val counts = c.events.filterIsInstance<SolveEvent.Thinking>().map { it.thinkingTokens }
        check(counts.isNotEmpty() && counts == counts.sorted() && counts.last() <= 24u) { "$counts" }
        check(c.events.filterIsInstance<SolveEvent.Thinking>().all { it.maxThinkingTokens == 24u }) { "cap" }
    }

    test("loadEngine suspends while the model loads") {
        val loaded = runBlocking { dev.reckon.ffi.loadEngine(modelPath, EngineOptions()) }
        check(loaded.info().architecture == "qwen2") { "loaded" }
        loaded.close()
        val facade = runBlocking { Reckon.loadAsync(modelPath) }
        check(facade.info.architecture == "qwen2") { "facade" }
        facade.close()
        try {
            runBlocking { dev.reckon.ffi.loadEngine("/nonexistent/model.gguf", EngineOptions()) }
            throw AssertionError("no exception")
        } catch (e: ReckonException.ModelNotFound) {}
    }

    test("installModel copies with progress and refuses a wrong hash, keeping nothing") {
        val dir = java.nio.file.Files.createTempDirectory("reckon-install").toFile()
        try {
            val bytes = ByteArray(3 * 1024 * 1024 + 7) { (it * 31 + 7).toByte() }
            val src = File(dir, "download.bin").apply { writeBytes(bytes) }
            val sha = java.security.MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
            val dest = File(dir, "models/model.gguf")
            val calls = mutableListOf<Pair<ULong, ULong?>>()
            val listener = object : dev.reckon.ffi.InstallListener {
                override fun onProgress(phase: dev.reckon.ffi.InstallPhase, doneBytes: ULong, totalBytes: ULong?): Boolean {
                    calls.add(doneBytes to totalBytes)
                    return true
                }
            }
            check(dev.reckon.ffi.installModel(src.path, dest.path, sha, listener, null) == dest.path) { "path" }
            check(dest.readBytes().contentEquals(bytes)) { "bytes differ" }
            check(calls.last() == (bytes.size.toULong() to bytes.size.toULong())) { "${calls.last()}" }
            dest.delete()
            try {
                dev.reckon.ffi.installModel(src.path, dest.path, "0".repeat(64), null, null)
                throw AssertionError("no exception")
            } catch (e: ReckonException.HashMismatch) {}
            check(File(dir, "models").list()!!.isEmpty()) { "left: ${File(dir, "models").list()!!.toList()}" }
        } finally {
            dir.deleteRecursively()
        }
    }

    engine.close()
    println("$passed passed, $failed failed")
    if (failed > 0) kotlin.system.exitProcess(1)
}
